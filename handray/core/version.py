"""The package version, in one place (stamped into weight files and shown by `--version`)."""

VERSION = "0.1.0"
