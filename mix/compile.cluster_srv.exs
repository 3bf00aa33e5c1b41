defmodule Mix.Tasks.Compile.ClusterSrv do
  @moduledoc """
  Builds the `cluster_srv` Rust crate with cargo and installs the NIF in the app's priv dir.

    It runs as the first of the project's compilers, so plain `mix compile` (or `mix deps.compile`
  in an app that depends on `libcluster_srv`) builds everything. The crate is built in the
  release profile, with cargo's target directory kept beside the Mix build path
  (`_build/cluster_srv_cargo`), so that switching `MIX_ENV` or cleaning the dependency does not
  rebuild the Rust dependencies. `CARGO_TARGET_DIR`, when set, is used instead.

  When no Rust source, `Cargo.toml` or `Cargo.lock` is newer than the installed library, cargo
  is not run at all.
  """
  use Mix.Task.Compiler

  @crate "cluster_srv"
  @manifest "compile.cluster_srv"

  @impl true
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())
    features = features(Mix.env())
    destination = library_path()

    if up_to_date?(root, destination, features) do
      {:noop, []}
    else
      build(root, destination, features)
    end
  end

  @impl true
  def manifests, do: [manifest_path()]

  @impl true
  def clean do
    File.rm(library_path())
    File.rm(manifest_path())
    :ok
  end

  @doc false
  # The test build adds an entry point that panics on purpose, to test the panic guards.
  def features(:test), do: ["nif", "test-panic"]
  def features(_env), do: ["nif"]

  @doc false
  def library_path do
    Path.join([Mix.Project.app_path(), "priv", "native", @crate <> ".so"])
  end

  defp manifest_path, do: Path.join(Mix.Project.manifest_path(), @manifest)

  defp up_to_date?(root, destination, features) do
    with {:ok, %{mtime: built}} <- File.stat(destination, time: :posix),
         {:ok, ^features} <- read_manifest() do
      Enum.all?(sources(root), fn source ->
        case File.stat(source, time: :posix) do
          {:ok, %{mtime: changed}} -> changed <= built
          {:error, _} -> true
        end
      end)
    else
      _ -> false
    end
  end

  defp sources(root) do
    crate = Path.join(root, "native/#{@crate}")

    [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock"), Path.join(crate, "Cargo.toml")] ++
      Path.wildcard(Path.join(crate, "src/**/*.rs"))
  end

  defp read_manifest do
    with {:ok, binary} <- File.read(manifest_path()),
         {:ok, features} <- safe_binary_to_term(binary) do
      {:ok, features}
    end
  end

  defp safe_binary_to_term(binary) do
    {:ok, :erlang.binary_to_term(binary, [:safe])}
  rescue
    ArgumentError -> :error
  end

  defp build(root, destination, features) do
    case find_cargo() do
      nil ->
        error("""
        cargo was not found, so the cluster_srv NIF cannot be built.
        Install the Rust toolchain (https://rustup.rs):

            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh

        then make sure `cargo` is on the PATH and run `mix compile` again.
        """)

      cargo ->
        target_dir =
          System.get_env("CARGO_TARGET_DIR") ||
            Path.expand("../cluster_srv_cargo", Mix.Project.build_path())

        args =
          ~w(build --release --package #{@crate} --features #{Enum.join(features, ",")}) ++
            ["--manifest-path", Path.join(root, "Cargo.toml"), "--target-dir", target_dir]

        Mix.shell().info("Compiling the #{@crate} NIF with cargo (release profile)")

        case System.cmd(cargo, args,
               cd: root,
               into: IO.stream(:stdio, :line),
               stderr_to_stdout: true
             ) do
          {_, 0} ->
            install(
              Path.join([target_dir, "release", built_library_name()]),
              destination,
              features
            )

          {_, status} ->
            error("""
            cargo build of the #{@crate} NIF failed (exit status #{status}); its output is above.
            The crate needs Rust 1.91 or newer (`rustup update`) and a C linker (`apt-get install gcc`).
            """)
        end
    end
  end

  defp install(built, destination, features) do
    File.mkdir_p!(Path.dirname(destination))
    # Remove before copying: a running VM may still map the old file, and overwriting it in
    # place would crash that VM.
    File.rm(destination)
    File.cp!(built, destination)
    File.mkdir_p!(Path.dirname(manifest_path()))
    File.write!(manifest_path(), :erlang.term_to_binary(features))
    {:ok, []}
  end

  defp built_library_name do
    case :os.type() do
      {:unix, :darwin} -> "lib#{@crate}.dylib"
      {:win32, _} -> "#{@crate}.dll"
      _ -> "lib#{@crate}.so"
    end
  end

  defp find_cargo do
    System.find_executable("cargo") ||
      Enum.find([Path.expand("~/.cargo/bin/cargo")], &File.regular?/1)
  end

  defp error(message) do
    Mix.shell().error(message)

    diagnostic = %Mix.Task.Compiler.Diagnostic{
      compiler_name: "cluster_srv",
      file: Path.join(Path.dirname(Mix.Project.project_file()), "Cargo.toml"),
      message: message,
      position: nil,
      severity: :error
    }

    {:error, [diagnostic]}
  end
end
