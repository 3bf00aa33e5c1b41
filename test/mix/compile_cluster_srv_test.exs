defmodule Mix.Tasks.Compile.ClusterSrvTest do
  # Runs `mix compile` in separate OS processes, as a user would.
  use ExUnit.Case, async: true

  @moduletag :integration
  @moduletag timeout: 300_000

  @root Path.expand("../..", __DIR__)

  test "a second compile with no Rust change runs no cargo" do
    {output, 0} = mix(["compile"], [{"MIX_ENV", "test"}])
    refute output =~ "Compiling the cluster_srv NIF"
    refute output =~ "cargo"
    assert File.regular?(Path.join(Mix.Project.app_path(), "priv/native/cluster_srv.so"))
  end

  @tag :tmp_dir
  test "without cargo, compile fails and says what to install", %{tmp_dir: tmp_dir} do
    env = [
      {"MIX_BUILD_PATH", Path.join(tmp_dir, "_build")},
      {"PATH", "/usr/local/bin:/usr/bin:/bin"},
      {"HOME", tmp_dir}
    ]

    {output, status} = mix(["compile"], env)
    assert status != 0
    assert output =~ "cargo was not found"
    assert output =~ "https://rustup.rs"
  end

  @tag :tmp_dir
  test "a failed cargo build fails compile with a hint", %{tmp_dir: tmp_dir} do
    env = [
      {"MIX_BUILD_PATH", Path.join(tmp_dir, "_build")},
      {"RUSTFLAGS", "-C no-such-codegen-option"}
    ]

    {output, status} = mix(["compile"], env)
    assert status != 0
    assert output =~ "cargo build of the cluster_srv NIF failed"
    assert output =~ "rustup update"

    refute File.exists?(
             Path.join(tmp_dir, "_build/lib/libcluster_srv/priv/native/cluster_srv.so")
           )
  end

  defp mix(args, env) do
    System.cmd("mix", args, cd: @root, env: env, stderr_to_stdout: true)
  end
end
