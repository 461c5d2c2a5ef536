"""Registry of methods: config.method -> Method class. Adding a method is one line here."""

from semi_ssl.methods import daino, semppl, suave, supervised

REGISTRY = {
  'daino': daino.Daino,
  'semppl': semppl.SemPPL,
  'suave': suave.Suave,
  'supervised': supervised.Supervised,
}
