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
    assert output =~ "CLUSTER_SRV_NIF_PATH"
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

  describe "CLUSTER_SRV_NIF_PATH" do
    @describetag :tmp_dir

    test "naming no file fails compile with a diagnostic that names it", %{tmp_dir: tmp_dir} do
      missing = Path.join(tmp_dir, "libcluster_srv.so")
      {output, status} = mix(["compile"], prebuilt_env(tmp_dir, missing))

      assert status != 0
      assert output =~ "CLUSTER_SRV_NIF_PATH is #{inspect(missing)}, which cannot be read"
      assert output =~ "no such file or directory"
    end

    test "naming a directory fails compile with a diagnostic", %{tmp_dir: tmp_dir} do
      {output, status} = mix(["compile"], prebuilt_env(tmp_dir, tmp_dir))

      assert status != 0
      assert output =~ "CLUSTER_SRV_NIF_PATH is #{inspect(tmp_dir)}, which is a directory"
    end

    test "naming an archive rather than a library fails compile", %{tmp_dir: tmp_dir} do
      archive = Path.join(tmp_dir, "libcluster_srv.so.tar.gz")
      :ok = :erl_tar.create(String.to_charlist(archive), [{~c"x", "data"}], [:compressed])
      {output, status} = mix(["compile"], prebuilt_env(tmp_dir, archive))

      assert status != 0
      assert output =~ "which is not a shared library"
    end

    defp prebuilt_env(tmp_dir, path) do
      [{"MIX_BUILD_PATH", Path.join(tmp_dir, "_build")}, {"CLUSTER_SRV_NIF_PATH", path}]
    end
  end

  # rustc compiles every crate for the target through the wrapper, which records its arguments
  # and fails: no musl toolchain is needed to see the flags cargo passes for a musl target.
  @tag :tmp_dir
  test "for a musl target, the crate's cargo config reaches rustc, and a failure hints at musl",
       %{tmp_dir: tmp_dir} do
    wrapper = Path.join(tmp_dir, "rustc-wrapper")

    File.write!(wrapper, """
    #!/bin/sh
    case " $* " in
      *" --print"*|*" -vV "*) exec "$@" ;;                  # cargo's questions to rustc
      *" --target "*) printf '%s\\n' "$*" >> "$0.args"; exit 1 ;;  # a crate for the target
      *) exec "$@" ;;                                        # build scripts, proc macros
    esac
    """)

    File.chmod!(wrapper, 0o755)

    env = [
      {"MIX_BUILD_PATH", Path.join(tmp_dir, "_build")},
      {"CARGO_TARGET_DIR", Path.join(tmp_dir, "cargo")},
      {"CARGO_BUILD_TARGET", "x86_64-unknown-linux-musl"},
      {"RUSTC_WRAPPER", wrapper}
    ]

    {output, status} = mix(["compile"], env)
    assert status != 0
    assert output =~ "On a musl target (Alpine) a NIF must link the C library dynamically"

    compiles =
      (wrapper <> ".args")
      |> File.read!()
      |> String.split("\n", trim: true)
      |> Enum.filter(&(&1 =~ "--target x86_64-unknown-linux-musl"))

    assert compiles != []
    assert Enum.all?(compiles, &(&1 =~ "-C target-feature=-crt-static"))
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

      assert %{"req" => "^" <> _, "optional" => true} =
               Enum.find(dependencies, &(&1["name"] == "rustler"))
    end
  end

  defp mix(args, env) do
    System.cmd("mix", args, cd: @root, env: env, stderr_to_stdout: true)
  end
end
