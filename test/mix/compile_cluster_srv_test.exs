defmodule Mix.Tasks.Compile.ClusterSrvTest do
  # Runs `mix compile` in separate OS processes, as a user would. The builds from the package's
  # files, in temporary directories, are in package_test.exs.
  use ExUnit.Case, async: true

  alias Mix.Tasks.Compile.ClusterSrv.JSON

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

  describe "cargo's JSON messages" do
    test "decode to maps with string keys, lists, numbers, booleans and nil" do
      assert JSON.decode(~s({"reason":"compiler-artifact","filenames":["/a.so"],"fresh":true})) ==
               {:ok,
                %{"reason" => "compiler-artifact", "filenames" => ["/a.so"], "fresh" => true}}

      assert JSON.decode(~s( [0, -12, 1.5, 2e3, -1.25E-2, null, false, {}, []] )) ==
               {:ok, [0, -12, 1.5, 2.0e3, -0.0125, nil, false, %{}, []]}
    end

    test "decode string escapes, including surrogate pairs" do
      assert JSON.decode(~S("a\"b\\c\/d\n\t\r\b\f \u00e9 \ud83e\udd80 \uD7FF")) ==
               {:ok, "a\"b\\c/d\n\t\r\b\f é 🦀 \u{D7FF}"}
    end

    test "refuse what is not JSON" do
      for text <- [
            "",
            "{",
            ~s({"a":1,}),
            "[1,]",
            ~s({"a" 1}),
            "[1] x",
            "01",
            ~s("unterminated),
            ~S("\ud800"),
            ~S("\udc00\u0041"),
            ~S("\u+123"),
            ~S("\x"),
            "   Compiling cluster_srv v0.1.0"
          ] do
        assert JSON.decode(text) == :error, "decoded #{inspect(text)}"
      end
    end

    test "decode cargo's own description of the workspace" do
      {output, 0} =
        System.cmd("cargo", ~w(metadata --format-version 1 --no-deps --locked --offline),
          cd: Path.join(@root, "native/cluster_srv")
        )

      assert {:ok, %{"packages" => packages, "workspace_root" => root}} = JSON.decode(output)
      assert root == @root
      assert [%{"name" => "cluster_srv", "dependencies" => dependencies}] = packages

      assert %{"req" => "^0.39", "optional" => true} =
               Enum.find(dependencies, &(&1["name"] == "rustler"))
    end
  end

  defp mix(args, env) do
    System.cmd("mix", args, cd: @root, env: env, stderr_to_stdout: true)
  end
end
