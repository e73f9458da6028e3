"""fusegw: a FUSE quota gateway for the shared storage of AI clusters."""

__version__ = "0.1.0"
