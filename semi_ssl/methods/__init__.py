"""Registry of methods: config.method -> Method class. Adding a method is one line here."""
from semi_ssl.methods import daino, suave, supervised

REGISTRY = {
    'daino': daino.Daino,
    'suave': suave.Suave,
    'supervised': supervised.Supervised,
}
