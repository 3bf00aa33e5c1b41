defmodule ClusterSRV.ChaosTest do
  # The chaos soak (ClusterSRV.Harness.Chaos): clusters of real pods under partial DNS faults,
  # BIND restarts and pod churn, checked against the truth the run wrote. Excluded from a plain
  # `mix test`; `make chaos` runs it for CHAOS_SECONDS (default 600), and `make test` for 60 s
  # with a fixed seed. CHAOS_SEED replays a run's schedule.
  use ExUnit.Case, async: false

  @moduletag :chaos
  @moduletag :integration
  @moduletag :e2e
  @moduletag :netns
  @moduletag timeout: :infinity

  # `--only chaos` includes it even where test_helper.exs excludes the :netns tests.
  if reason = ClusterSRV.Harness.Netns.unavailable_reason(),
    do: @moduletag(skip: "pods in network namespaces: #{reason}")

  alias ClusterSRV.Harness.Chaos

  defp env_integer(name, default) do
    case System.get_env(name, "") do
      "" -> default
      value -> String.to_integer(value)
    end
  end

  test "under partial DNS faults and pod churn, no strategy drops a live listed pod, keeps a gone one, or leaks" do
    seconds = env_integer("CHAOS_SECONDS", 600)
    seed = env_integer("CHAOS_SEED", :rand.uniform(1_000_000))
    dump = System.get_env("CHAOS_DUMP")
    report = Chaos.run(seconds: seconds, seed: seed, dump: dump != "" && dump)
    IO.puts(report.text)

    assert report.violations == 0,
           "#{report.violations} violations; the report above explains each " <>
             "(CHAOS_SEED=#{seed} replays the run)"
  end
end
