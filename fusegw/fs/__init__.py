"""The pyfuse3 side: a passthrough over directory file descriptors, with quota admission."""
