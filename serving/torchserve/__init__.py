"""TorchServe (0.12, archived upstream: limited maintenance since 2025): handler, .mar archiver, local server."""
