defmodule ClusterSRV.Harness.ExampleRelease do
  @moduledoc """
  Builds `examples/app` as a release (`MIX_ENV=prod mix release`) into a temporary directory,
  for pods that start as the manifests in `examples/kubernetes` start them.

      bin = ClusterSRV.Harness.ExampleRelease.build!()   # .../rel/example/bin/example
      ClusterSRV.Harness.NetnsCluster.start!(network: net, service: "example-headless",
        app: "example", release: bin)
      ClusterSRV.Harness.ExampleRelease.remove(bin)

  Cargo's cache is shared with the project's (`_build/cluster_srv_cargo`), so only the crate
  itself builds.
  """

  alias ClusterSRV.Harness.Watchdog

  @root Path.expand("../../..", __DIR__)

  @doc "Builds the release and returns the path of its `bin/example`; raises if the build fails."
  def build! do
    build = Watchdog.tmp_dir("cluster_srv_release")

    env = [
      {"MIX_ENV", "prod"},
      {"MIX_BUILD_PATH", build},
      {"CARGO_TARGET_DIR", Path.join(@root, "_build/cluster_srv_cargo")}
    ]

    case System.cmd("mix", ["release", "--overwrite"],
           cd: Path.join(@root, "examples/app"),
           env: env,
           stderr_to_stdout: true
         ) do
      {output, 0} ->
        unless output =~ "Release created", do: raise("mix release said:\n#{output}")
        Path.join(build, "rel/example/bin/example")

      {output, status} ->
        raise "mix release failed (#{status}):\n#{output}"
    end
  end

  @doc "Removes the build directory of a release `build!/0` made."
  def remove(bin), do: File.rm_rf(bin |> Path.join("../../../..") |> Path.expand())
end
