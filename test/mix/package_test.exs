defmodule ClusterSRV.PackageTest do
  # The package as hex would ship it: only the files in `package[:files]`, copied to a temporary
  # directory and built there by `mix compile` in an OS process, as a user's machine would. The
  # NIF is then called in a fresh VM. Cargo's target directory is the project's own, so the Rust
  # dependencies are compiled once and every copy builds only the cluster_srv crate.
  use ExUnit.Case, async: false

  alias ClusterSRV.Harness.Watchdog

  @moduletag :integration
  @moduletag :package
  @moduletag timeout: 600_000

  @root Path.expand("../..", __DIR__)
  @cargo_target Path.join(@root, "_build/cluster_srv_cargo")
  @library "_build/dev/lib/libcluster_srv/priv/native/cluster_srv.so"

  # Calls both kinds of NIF: a resolver resource, and node naming, which needs no DNS server.
  @probe ~S"""
  {:ok, _} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:53"])
  record = %ClusterSRV.Record{priority: 0, weight: 1, port: 4370, ttl: 5, target: "app-0.app.default.svc.cluster.local"}
  {:ok, %{nodes: nodes}} = ClusterSRV.Resolver.node_names([record], application_name: "app")
  IO.puts("native answer: #{inspect(nodes)}")
  """
  @answer ~s(native answer: [:"app@app-0.app.default.svc.cluster.local"])

  setup_all do
    dir = package_copy!("package")
    {output, status} = mix(["compile"], dir)
    assert status == 0, "mix compile of the package's files failed:\n#{output}"

    # A copy of the library it built, for the tests of a prebuilt library.
    prebuilt = Path.join(dir, "libcluster_srv.so")
    File.cp!(Path.join(dir, @library), prebuilt)

    on_exit(fn -> File.rm_rf!(dir) end)
    %{package: dir, compile_output: output, prebuilt: prebuilt}
  end

  setup context do
    dirs = for name <- context[:copies] || [], into: %{}, do: {name, package_copy!("package")}
    on_exit(fn -> Enum.each(dirs, fn {_, dir} -> File.rm_rf!(dir) end) end)
    %{copies: dirs}
  end

  describe "built from the package's files alone" do
    test "mix compile builds the NIF with cargo, and it answers in a fresh VM", context do
      assert context.compile_output =~ "Compiling the cluster_srv NIF with cargo"
      assert File.regular?(Path.join(context.package, @library))
      assert mix!(["run", "-e", @probe], context.package) =~ @answer
    end

    test "a second mix compile runs no cargo", %{package: dir} do
      output = mix!(["compile"], dir)
      refute output =~ "cargo"
    end

    test "mix compile --force recompiles the crate and installs a new file", %{package: dir} do
      library = Path.join(dir, @library)
      before = File.stat!(library)

      output = mix!(["compile", "--force"], dir)
      assert output =~ ~r/Compiling cluster_srv v[\d.]+/
      # Installed by a rename: a new inode, never the old file rewritten.
      assert File.stat!(library).inode != before.inode
      assert mix!(["run", "-e", @probe], dir) =~ @answer
    end

    @tag copies: [:app]
    test "with CARGO_BUILD_TARGET, the library comes from that target's directory", context do
      dir = context.copies.app
      target = "x86_64-unknown-linux-gnu"
      env = [{"CARGO_BUILD_TARGET", target}]

      mix!(["compile"], dir, env)
      installed = File.read!(Path.join(dir, @library))

      assert installed ==
               File.read!(Path.join(@cargo_target, "#{target}/release/libcluster_srv.so"))

      assert mix!(["run", "-e", @probe], dir, env) =~ @answer

      # Without it again, cargo builds for the host and that library replaces the other.
      assert mix!(["compile"], dir) =~ "Compiling the cluster_srv NIF with cargo"

      assert File.read!(Path.join(dir, @library)) ==
               File.read!(Path.join(@cargo_target, "release/libcluster_srv.so"))
    end

    @tag copies: [:app]
    test "a broken Rust file fails compile with a diagnostic naming the file and line", context do
      dir = context.copies.app
      source = Path.join(dir, "native/cluster_srv/src/names.rs")
      File.write!(source, "\nfn broken() -> u32 {\n    \"not a number\"\n}\n", [:append])
      line = length(String.split(File.read!(source), "\n")) - 2

      {output, status} = mix(["compile"], dir)
      assert status != 0
      assert output =~ "cargo build of the cluster_srv NIF failed"
      assert output =~ "mismatched types"
      refute File.exists?(Path.join(dir, @library))

      # The diagnostics Mix gets, as an editor would see them.
      show = ~S"""
      {:error, diagnostics} = Mix.Task.run("compile", ["--return-errors"])
      for %{file: file, position: {line, _}, message: message} <- diagnostics,
          do: IO.puts("diagnostic: #{file}:#{line}: #{message}")
      """

      {output, _} = mix(["run", "--no-compile", "--no-start", "-e", show], dir)
      assert output =~ "diagnostic: #{source}:#{line}: mismatched types"
    end

    @tag copies: [:app]
    test "a crate that builds no cdylib fails compile with a diagnostic", context do
      dir = context.copies.app
      manifest = Path.join(dir, "native/cluster_srv/Cargo.toml")
      File.write!(manifest, String.replace(File.read!(manifest), ~s("cdylib", ), ""))

      {output, status} = mix(["compile"], dir)
      assert status != 0
      assert output =~ "cargo built the cluster_srv crate but no shared library of it"
      refute output =~ "** ("
    end

    @tag copies: [:app]
    test "Cargo.lock is used as it is: without it, compile fails and writes none", context do
      dir = context.copies.app
      File.rm!(Path.join(dir, "Cargo.lock"))

      {output, status} = mix(["compile"], dir, [{"CARGO_NET_OFFLINE", "true"}])
      assert status != 0
      assert output =~ "because --locked was passed"
      assert output =~ "Cargo.lock must match the Cargo.toml files"
      refute File.exists?(Path.join(dir, "Cargo.lock"))
    end

    # cargo itself refuses CARGO_NET_OFFLINE=1; the compiler passes --offline for it.
    @tag copies: [:app]
    test "with CARGO_NET_OFFLINE=1, cargo downloads nothing", context do
      dir = context.copies.app
      cargo_home = Path.join(dir, "cargo_home")
      env = [{"CARGO_NET_OFFLINE", "1"}, {"CARGO_HOME", cargo_home}]

      {output, status} = mix(["compile"], dir, env)
      assert status != 0
      assert output =~ "you're using offline mode"
      assert output =~ "CARGO_NET_OFFLINE is set, so cargo downloaded nothing"
      assert Path.wildcard(Path.join(cargo_home, "registry/cache/**/*.crate")) == []
    end
  end

  describe "as a path dependency in an umbrella" do
    setup %{package: package} do
      dir = Watchdog.tmp_dir("cluster_srv_umbrella")
      on_exit(fn -> File.rm_rf!(dir) end)

      File.write!(Path.join(dir, "mix.exs"), """
      defmodule Umbrella.MixProject do
        use Mix.Project
        def project, do: [apps_path: "apps", deps: []]
      end
      """)

      app = Path.join(dir, "apps/consumer")
      File.mkdir_p!(Path.join(app, "lib"))

      File.write!(Path.join(app, "mix.exs"), """
      defmodule Consumer.MixProject do
        use Mix.Project

        def project do
          [app: :consumer, version: "0.1.0", elixir: "~> 1.14", build_path: "../../_build",
           deps_path: "../../deps", lockfile: "../../mix.lock",
           deps: [{:libcluster_srv, path: #{inspect(package)}}]]
        end
      end
      """)

      File.write!(Path.join(app, "lib/consumer.ex"), "defmodule Consumer do\nend\n")
      %{umbrella: dir, app: app}
    end

    test "mix compile in the umbrella builds the NIF, and it answers in the app's VM", context do
      assert mix!(["compile"], context.umbrella) =~ "Compiling the cluster_srv NIF with cargo"
      assert File.regular?(Path.join(context.umbrella, @library))
      assert mix!(["run", "-e", @probe], context.app) =~ @answer
    end
  end

  describe "a prebuilt library (CLUSTER_SRV_NIF_PATH)" do
    @tag copies: [:app]
    test "is installed without cargo, which need not be on the PATH", context do
      dir = context.copies.app
      home = Path.join(dir, "home")
      File.mkdir_p!(home)

      env = [
        {"PATH", "/usr/local/bin:/usr/bin:/bin"},
        {"HOME", home},
        {"CLUSTER_SRV_NIF_PATH", context.prebuilt}
      ]

      assert {_, status} = System.cmd("sh", ["-c", "command -v cargo"], env: env)
      assert status != 0, "cargo is on #{inspect(env)}"
      refute File.exists?(Path.join(home, ".cargo/bin/cargo"))

      output = mix!(["compile"], dir, env)
      assert output =~ "Installing the prebuilt cluster_srv NIF from #{context.prebuilt}"
      refute output =~ "cargo"
      assert File.read!(Path.join(dir, @library)) == File.read!(context.prebuilt)

      refute mix!(["compile"], dir, env) =~ "Installing"
      assert mix!(["run", "-e", @probe], dir, env) =~ @answer
    end
  end

  describe "built for prod" do
    # The release profile (Cargo.toml) ships no debug information: its line tables made the
    # library 15 MB. The symbol table stays, so that a backtrace still names functions, and so
    # does .eh_frame, which a panic unwinds by to the guard that returns {:panic, message}.
    @tag copies: [:app]
    test "the NIF is at most 3 MB, with no DWARF sections, but symbols and unwind tables",
         context do
      dir = context.copies.app
      mix!(["compile"], dir, [{"MIX_ENV", "prod"}])
      library = Path.join(dir, "_build/prod/lib/libcluster_srv/priv/native/cluster_srv.so")

      size = File.stat!(library).size
      assert size <= 3_000_000, "the prod NIF is #{size} bytes, more than 3 MB"

      sections = elf_section_names!(library)
      assert Enum.filter(sections, &String.starts_with?(&1, [".debug", ".zdebug"])) == []
      assert ".symtab" in sections
      assert ".eh_frame" in sections
    end
  end

  # The multi-stage Docker build of guides/building.md, stage by stage without Docker: each
  # stage gets only what the Dockerfile copies into it.
  describe "the guide's multi-stage build" do
    @tag copies: [:dependency]
    test "cargo alone builds the NIF, and a release built without cargo runs it", context do
      # The Rust stage: the dependency's files and cargo, no Elixir build.
      dependency = context.copies.dependency

      {output, status} =
        System.cmd(
          "cargo",
          ~w(build --release --locked --features nif --target-dir #{@cargo_target}),
          cd: Path.join(dependency, "native/cluster_srv"),
          env: [{"CARGO_BUILD_TARGET", nil}],
          stderr_to_stdout: true
        )

      assert status == 0, "cargo build failed:\n#{output}"
      # Copied at once, as COPY --from does: other builds in this target dir write that path too.
      nif = Path.join(dependency, "libcluster_srv.so")
      File.cp!(Path.join(@cargo_target, "release/libcluster_srv.so"), nif)

      # The Elixir stage: an app depending on the library, released for prod with no cargo.
      app = consumer_app!(dependency)
      home = Path.join(app, "home")
      File.mkdir_p!(home)

      env = [
        {"MIX_ENV", "prod"},
        {"PATH", "/usr/local/bin:/usr/bin:/bin"},
        {"HOME", home},
        {"CLUSTER_SRV_NIF_PATH", nif}
      ]

      assert {_, status} = System.cmd("sh", ["-c", "command -v cargo"], env: env)
      assert status != 0, "cargo is on #{inspect(env)}"

      output = mix!(["release"], app, env)
      assert output =~ "Installing the prebuilt cluster_srv NIF from #{nif}"
      refute output =~ "Compiling the cluster_srv NIF"

      # The runtime stage: the release alone.
      release = Path.join(app, "_build/prod/rel/consumer")
      File.rename!(release, Path.join(dependency, "release"))
      File.rm_rf!(app)
      bin = Path.join(dependency, "release/bin/consumer")

      {output, status} =
        System.cmd(bin, ["eval", @probe], env: [{"PATH", "/usr/bin:/bin"}], stderr_to_stdout: true)

      assert status == 0, "the release's eval failed:\n#{output}"
      assert output =~ @answer
    end
  end

  # Real shared libraries, built with gcc, that this VM refuses, each for one reason. They are
  # put where the NIF belongs in a copy of the compiled app, and the first call explains.
  describe "a library that does not fit this VM" do
    setup do
      dir = Watchdog.tmp_dir("cluster_srv_misfit")
      on_exit(fn -> File.rm_rf!(dir) end)
      %{dir: dir}
    end

    test "built for a newer NIF version: says which erts it needs and which this VM is", %{
      dir: dir
    } do
      [major, minor] = :erlang.system_info(:nif_version) |> to_string() |> String.split(".")
      [erts | _] = :erlang.system_info(:version) |> to_string() |> String.split(".")
      needs = "erts-#{String.to_integer(erts) + 1}.0"

      # The entry ERL_NIF_INIT would write, one NIF version and one erts ahead of this VM.
      library =
        gcc!(dir, "newer", """
        #include <erl_nif.h>
        static ErlNifEntry entry = {#{major}, #{String.to_integer(minor) + 1},
          "Elixir.ClusterSRV.Native", 0, NULL, NULL, NULL, NULL, NULL, ERL_NIF_VM_VARIANT, 1,
          sizeof(ErlNifResourceTypeInit), "#{needs}"};
        ERL_NIF_INIT_EXPORT ErlNifEntry *nif_init(void) { return &entry; }
        """)

      message = first_call(dir, library)
      assert message =~ "was built for a newer NIF version than this VM's: it needs #{needs}"
      assert message =~ "this VM is erts-#{:erlang.system_info(:version)}"
      assert message =~ "NIF version #{:erlang.system_info(:nif_version)}"
      assert message =~ "mix compile --force"
    end

    test "of another ELF class: says what the file is and what this VM runs", %{dir: dir} do
      library = gcc!(dir, "elf32", "int cluster_srv_stand_in;\n", ~w(-m32 -nostdlib))

      message = first_call(dir, library)
      assert message =~ "wrong ELF class: ELFCLASS32"
      assert message =~ ~r"/priv/native/cluster_srv\.so is a 32-bit little-endian x86 ELF file"
      assert message =~ "but this VM runs 64-bit little-endian x86-64 code"
      assert message =~ to_string(:erlang.system_info(:system_architecture))
    end

    test "linked against musl's C library: says it was built on Alpine", %{dir: dir} do
      musl =
        gcc!(dir, "libc.musl-x86_64.so.1", "int musl_stand_in;\n", [
          "-nostdlib",
          "-Wl,-soname,libc.musl-x86_64.so.1"
        ])

      library = gcc!(dir, "alpine", "int nif;\n", ["-Wl,--no-as-needed", musl])
      File.rm!(musl)

      message = first_call(dir, library)
      assert message =~ "needs libc.musl-x86_64.so.1, which this system does not have"
      assert message =~ "That is musl's C library: it was built on Alpine"
    end

    test "that is no NIF: says to build it with the nif feature", %{dir: dir} do
      library = gcc!(dir, "plain", "int not_a_nif(void) { return 1; }\n")

      message = first_call(dir, library)
      assert message =~ "is a shared library but not a NIF: build it with `--features nif`"
    end

    test "of another version of the crate: says so", %{dir: dir} do
      library =
        gcc!(dir, "other", """
        #include <erl_nif.h>
        static ERL_NIF_TERM gone(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
          return enif_make_atom(env, "ok");
        }
        static ErlNifFunc funcs[] = {{"removed_in_another_version", 0, gone, 0}};
        ERL_NIF_INIT(Elixir.ClusterSRV.Native, funcs, NULL, NULL, NULL, NULL)
        """)

      message = first_call(dir, library)
      assert message =~ "is a NIF from another version of libcluster_srv"
    end
  end

  ## Helpers

  defp package_copy!(name) do
    dir = Watchdog.tmp_dir("cluster_srv_#{name}")

    for entry <- Mix.Project.config()[:package][:files] do
      source = Path.join(@root, entry)
      assert File.exists?(source), "package[:files] names #{entry}, which does not exist"
      File.mkdir_p!(Path.dirname(Path.join(dir, entry)))
      File.cp_r!(source, Path.join(dir, entry))
    end

    dir
  end

  # An app of its own that depends on the library at `dependency`, by path.
  defp consumer_app!(dependency) do
    dir = Watchdog.tmp_dir("cluster_srv_consumer")
    File.mkdir_p!(Path.join(dir, "lib"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project

      def project do
        [app: :consumer, version: "0.1.0", elixir: "~> 1.14",
         deps: [{:libcluster_srv, path: #{inspect(dependency)}}]]
      end
    end
    """)

    File.write!(Path.join(dir, "lib/consumer.ex"), "defmodule Consumer do\nend\n")
    on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  # The names of an ELF file's sections, from its section headers (64-bit little-endian).
  defp elf_section_names!(file) do
    binary = File.read!(file)

    <<0x7F, "ELF", 2, 1, _ident::binary-10, _type::16, _machine::16, _version::32, _entry::64,
      _phoff::64, shoff::little-64, _flags::32, _ehsize::16, _phentsize::16, _phnum::16,
      shentsize::little-16, shnum::little-16, shstrndx::little-16, _::binary>> = binary

    headers =
      for index <- 0..(shnum - 1) do
        <<name::little-32, _type::32, _flags::64, _address::64, offset::little-64,
          size::little-64, _::binary>> = binary_part(binary, shoff + index * shentsize, shentsize)

        {name, offset, size}
      end

    {_, names_at, names_size} = Enum.at(headers, shstrndx)
    names = binary_part(binary, names_at, names_size)

    for {name, _, _} <- headers do
      names |> binary_part(name, names_size - name) |> :binary.split(<<0>>) |> hd()
    end
  end

  defp mix(args, dir, env \\ []) do
    defaults = %{
      "MIX_ENV" => "dev",
      "CARGO_TARGET_DIR" => @cargo_target,
      "CARGO_BUILD_TARGET" => nil,
      "CARGO_NET_OFFLINE" => nil,
      "CLUSTER_SRV_NIF_PATH" => nil
    }

    env = defaults |> Map.merge(Map.new(env)) |> Map.to_list()
    System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true)
  end

  defp mix!(args, dir, env \\ []) do
    case mix(args, dir, env) do
      {output, 0} -> output
      {output, status} -> flunk("mix #{Enum.join(args, " ")} failed (#{status}):\n#{output}")
    end
  end

  defp gcc!(dir, name, source, flags \\ []) do
    file = Path.join(dir, name <> ".c")
    File.write!(file, source)
    library = Path.join(dir, if(name =~ ".so", do: name, else: name <> ".so"))
    include = Path.join(:code.root_dir(), "usr/include")
    args = ["-shared", "-fPIC", "-I", include, "-o", library, file | flags]

    case System.cmd("gcc", args, stderr_to_stdout: true) do
      {_, 0} -> library
      {output, status} -> flunk("gcc #{Enum.join(args, " ")} failed (#{status}):\n#{output}")
    end
  end

  # The app's compiled code with `library` as its NIF, and what the first call to it says.
  defp first_call(dir, library) do
    app = Path.join(dir, "lib/libcluster_srv")
    File.mkdir_p!(Path.join(app, "priv/native"))
    File.cp_r!(Path.join(Mix.Project.app_path(), "ebin"), Path.join(app, "ebin"))
    File.cp!(library, Path.join(app, "priv/native/cluster_srv.so"))

    {output, status} =
      System.cmd(
        "elixir",
        [
          "-pa",
          Path.join(app, "ebin"),
          "-e",
          "ClusterSRV.Resolver.new(nameservers: [\"127.0.0.1\"])"
        ],
        stderr_to_stdout: true
      )

    assert status != 0
    assert output =~ "the cluster_srv NIF is not loaded"
    output
  end
end
