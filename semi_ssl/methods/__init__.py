"""Registry of methods: config.method -> Method class. Adding a method is one line here."""
from semi_ssl.methods import suave, supervised

REGISTRY = {
    'suave': suave.Suave,
    'supervised': supervised.Supervised,
}
