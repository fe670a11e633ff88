"""refold-projector: Refold webhooks in, a durable event log, read models out."""

from projector.config import ConfigError, Settings, SigningKey, load_settings
from projector.signature import sign_body, verify_signature

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Settings",
    "SigningKey",
    "__version__",
    "load_settings",
    "sign_body",
    "verify_signature",
]
