"""Registry of methods: config.method -> Method class. Adding a method is one line here."""

from semi_ssl.methods import daino, s4l, sela, semppl, simclrv2, suave, supervised

REGISTRY = {
  'daino': daino.Daino,
  's4l': s4l.S4L,
  'sela': sela.SeLa,
  'semppl': semppl.SemPPL,
  'simclrv2': simclrv2.SimCLRv2,
  'suave': suave.Suave,
  'supervised': supervised.Supervised,
}
