# Integration tests start a real BIND (and, later, real BEAM nodes); `--exclude integration`
# skips them for a quick loop. `make test` runs everything.
ExUnit.start(capture_log: true)
