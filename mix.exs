# The NIF's build step is a Mix compiler of our own, loaded here because there is no hex package
# (rustler's included) to provide one. It is evaluated in every project that depends on us.
Code.require_file("mix/compile.cluster_srv.exs", __DIR__)

defmodule ClusterSRV.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :libcluster_srv,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:cluster_srv | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      description:
        "A libcluster strategy that forms clusters from DNS SRV records, resolved natively.",
      package: package(),
      test_coverage: [ignore_modules: [~r/^ClusterSRV\.Harness/]]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  # The local cluster harness serves the tests, the demo and the benchmarks, and the
  # benchmarks' helpers (which call the dev build's probe NIFs) the demo and the benchmarks;
  # none of it ships.
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(:test), do: ["lib", "test/support", "test/stand_ins"]
  defp elixirc_paths(_), do: ["lib", "test/support", "bench/support"]

  defp package do
    [
      licenses: ["Apache-2.0"],
      files: ~w(lib mix native/cluster_srv/src native/cluster_srv/Cargo.toml
                native/cluster_srv/.cargo/config.toml Cargo.toml Cargo.lock mix.exs README.md guides
                .formatter.exs)
    ]
  end
end
