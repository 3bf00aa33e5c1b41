# Integration tests start a real BIND (and, later, real BEAM nodes); `--exclude integration`
# skips them for a quick loop. `make test` runs everything.
#
# Tests tagged `netns` build pods in network namespaces (root on Linux). Whether this machine
# allows that is probed once, by making and deleting a namespace; where it does not, they are
# excluded and the reason is printed once.
netns_exclusion =
  case ClusterSRV.Harness.Netns.unavailable_reason() do
    nil ->
      []

    reason ->
      IO.puts("Excluding the :netns tests (pods in network namespaces): #{reason}")
      [:netns]
  end

# The test build's :telemetry stand-in, loaded as the telemetry application would load the real
# one in an app that has it: the strategy emits events only when :telemetry is loaded or its
# application is.
Code.ensure_loaded!(:telemetry)

# The chaos soak runs only when asked for (`mix test --only chaos`, as `make chaos` and `make
# test` run it): it takes minutes.
ExUnit.start(capture_log: true, exclude: [:chaos | netns_exclusion])
