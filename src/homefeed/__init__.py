"""homefeed: homefeed ranking on realtime user action sequences."""

__version__ = "0.1.0"
