defmodule Mix.Tasks.Compile.ClusterSrv do
  @moduledoc """
  Builds the `cluster_srv` Rust crate with cargo and installs the NIF in the app's priv dir, as
  `priv/native/cluster_srv.so`, the file `ClusterSRV.Native` loads.

  It runs as the first of the project's compilers, so plain `mix compile` (or `mix deps.compile`
  in an app that depends on `libcluster_srv`) builds everything.

  * cargo runs in `native/cluster_srv`, so that the crate's `.cargo/config.toml` applies (on
    musl targets it links the C library dynamically, as a NIF must), with `--release --locked`,
    and `--offline` when `CARGO_NET_OFFLINE` is `true` or `1`;
  * the library's path is read from cargo's JSON messages (the `compiler-artifact` of the
    cdylib), so `CARGO_BUILD_TARGET`, `build.target` and `CARGO_TARGET_DIR` are honoured;
  * cargo's target directory is `_build/cluster_srv_cargo`, beside the Mix build path, unless
    `CARGO_TARGET_DIR` is set, so that switching `MIX_ENV` or cleaning the dependency does not
    rebuild the Rust dependencies;
  * the library is written beside its destination and then renamed over it, so a VM that has
    the old file mapped keeps its copy intact.

  When no Rust source, Cargo file or the crate's cargo config is newer than the installed
  library, and the features and `CARGO_BUILD_TARGET` are those of the last build, cargo is not
  run at all. `mix compile --force` runs it anyway and recompiles the crate (not its
  dependencies).

  `CLUSTER_SRV_NIF_PATH=/path/to/libcluster_srv.so` installs that prebuilt library instead, and
  runs no cargo: cargo need not be installed. The path should be absolute, since
  `mix deps.compile` runs in the dependency's directory.

  Every failure is a compiler diagnostic, never an exception; a Rust error names its file and
  line.
  """
  use Mix.Task.Compiler

  alias Mix.Task.Compiler.Diagnostic
  alias Mix.Tasks.Compile.ClusterSrv.JSON

  @crate "cluster_srv"
  @manifest "compile.cluster_srv"
  @prebuilt_env "CLUSTER_SRV_NIF_PATH"

  @impl true
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, switches: [force: :boolean])
    root = Path.dirname(Mix.Project.project_file())
    force? = Keyword.get(opts, :force, false)

    result =
      case System.get_env(@prebuilt_env) do
        path when path in [nil, ""] -> build(root, force?)
        path -> install_prebuilt(Path.expand(path), force?)
      end

    case result do
      {:error, [summary | _] = diagnostics} ->
        Mix.shell().error(summary.message)
        {:error, diagnostics}

      other ->
        other
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
  # `make bench` runs in dev: its probe NIFs (see native/cluster_srv/src/probe.rs).
  def features(:dev), do: ["nif", "bench-probe"]
  def features(_env), do: ["nif"]

  @doc false
  def library_path do
    Path.join([Mix.Project.app_path(), "priv", "native", @crate <> ".so"])
  end

  defp manifest_path, do: Path.join(Mix.Project.manifest_path(), @manifest)

  ## A prebuilt library

  defp install_prebuilt(path, force?) do
    with {:ok, stat} <- prebuilt_stat(path),
         :ok <- shared_library(path) do
      inputs = %{origin: {:prebuilt, path, stat.size, stat.mtime}}

      if not force? and File.regular?(library_path()) and read_manifest() == {:ok, inputs} do
        {:noop, []}
      else
        Mix.shell().info("Installing the prebuilt #{@crate} NIF from #{path} (#{@prebuilt_env})")

        with :ok <- install(path, library_path()), :ok <- write_manifest(inputs) do
          {:ok, []}
        end
      end
    end
  end

  defp prebuilt_stat(path) do
    case File.stat(path, time: :posix) do
      {:ok, %{type: :regular} = stat} ->
        {:ok, stat}

      {:ok, %{type: type}} ->
        error(
          "#{@prebuilt_env} is #{inspect(path)}, which is a #{type}, not a file; expected the " <>
            "path of a built lib#{@crate}.so",
          path
        )

      {:error, reason} ->
        error(
          "#{@prebuilt_env} is #{inspect(path)}, which cannot be read " <>
            "(#{:file.format_error(reason)}); expected the path of a built lib#{@crate}.so",
          path
        )
    end
  end

  # Catches the likely mistakes (an archive, a directory listing, a script) at compile time;
  # whether the library suits this VM is checked when it loads.
  defp shared_library(path) do
    case File.open(path, [:read, :binary], &IO.binread(&1, 4)) do
      {:ok, <<0x7F, "ELF">>} ->
        :ok

      {:ok, <<magic::32>>} when magic in [0xFEEDFACE, 0xFEEDFACF, 0xCEFAEDFE, 0xCFFAEDFE] ->
        :ok

      {:ok, <<"MZ", _::binary>>} ->
        :ok

      {:ok, start} ->
        error(
          "#{@prebuilt_env} is #{inspect(path)}, which is not a shared library (it starts with " <>
            "#{inspect(start)}); expected a built lib#{@crate}.so, not an archive of one",
          path
        )

      {:error, reason} ->
        error("#{@prebuilt_env} is #{inspect(path)}: #{:file.format_error(reason)}", path)
    end
  end

  ## Building with cargo

  defp build(root, force?) do
    inputs = %{
      origin: :cargo,
      features: features(Mix.env()),
      target: System.get_env("CARGO_BUILD_TARGET")
    }

    if not force? and up_to_date?(root, inputs) do
      {:noop, []}
    else
      crate_dir = Path.join(root, "native/#{@crate}")

      with :ok <- crate_present(crate_dir),
           {:ok, cargo} <- find_cargo(),
           {:ok, built, warnings} <- cargo(cargo, root, crate_dir, inputs.features, force?),
           :ok <- install(built, library_path()),
           :ok <- write_manifest(inputs) do
        {:ok, warnings}
      end
    end
  end

  defp up_to_date?(root, inputs) do
    with {:ok, %{mtime: built}} <- File.stat(library_path(), time: :posix),
         {:ok, ^inputs} <- read_manifest() do
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

    [
      Path.join(root, "Cargo.toml"),
      Path.join(root, "Cargo.lock"),
      Path.join(crate, "Cargo.toml"),
      Path.join(crate, ".cargo/config.toml")
    ] ++ Path.wildcard(Path.join(crate, "src/**/*.rs"))
  end

  defp crate_present(crate_dir) do
    if File.regular?(Path.join(crate_dir, "Cargo.toml")) do
      :ok
    else
      error(
        "#{Path.join(crate_dir, "Cargo.toml")} is missing, so the #{@crate} NIF cannot be built"
      )
    end
  end

  defp find_cargo do
    case System.find_executable("cargo") ||
           Enum.find([Path.expand("~/.cargo/bin/cargo")], &File.regular?/1) do
      nil ->
        error("""
        cargo was not found, so the #{@crate} NIF cannot be built.
        Install the Rust toolchain (https://rustup.rs):

            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh

        then make sure `cargo` is on the PATH and run `mix compile` again, or set \
        #{@prebuilt_env} to a library built elsewhere.\
        """)

      cargo ->
        {:ok, cargo}
    end
  end

  defp cargo(cargo, root, crate_dir, features, force?) do
    target_dir =
      System.get_env("CARGO_TARGET_DIR") ||
        Path.expand("../cluster_srv_cargo", Mix.Project.build_path())

    {color, message_format} =
      if IO.ANSI.enabled?(),
        do: {"always", "json-diagnostic-rendered-ansi"},
        else: {"never", "json"}

    # cargo has no flag to rebuild one crate; arguments for its compiler change the crate's
    # fingerprint, so `cargo rustc` with a fresh --cfg recompiles it and nothing else.
    {command, rebuild} =
      if force?,
        do: {["rustc", "--lib"], ["--", "--cfg", "cluster_srv_rebuild=\"#{unique()}\""]},
        else: {["build"], []}

    args =
      command ++
        ~w(--release --locked --package #{@crate} --features #{Enum.join(features, ",")}) ++
        ["--target-dir", target_dir, "--message-format", message_format, "--color", color] ++
        if(offline?(), do: ["--offline"], else: []) ++ rebuild

    Mix.shell().info("Compiling the #{@crate} NIF with cargo (release profile)")

    case run_cargo(cargo, args, crate_dir) do
      {:ok, 0, messages} ->
        case built_library(messages) do
          nil -> error(no_library_message(messages))
          built -> {:ok, built, rustc_diagnostics(messages, root, ["warning"])}
        end

      {:ok, status, messages} ->
        errors = rustc_diagnostics(messages, root, ["error"])
        {:error, [diagnostic(failure_message(status, messages, errors)) | errors]}

      {:error, reason} ->
        error("cargo (#{cargo}) could not be started: #{inspect(reason)}")
    end
  end

  defp offline?, do: System.get_env("CARGO_NET_OFFLINE") in ["true", "1"]

  # cargo itself reads CARGO_NET_OFFLINE and refuses any value but true or false.
  defp cargo_env do
    case System.get_env("CARGO_NET_OFFLINE") do
      nil -> []
      _ -> [{~c"CARGO_NET_OFFLINE", if(offline?(), do: ~c"true", else: ~c"false")}]
    end
  end

  # Cargo's JSON messages go to stdout and its own text to stderr; both come through one pipe,
  # in order. Text and rendered diagnostics are passed on to the user as cargo would show them.
  defp run_cargo(cargo, args, crate_dir) do
    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 65_536},
        {:args, args},
        {:cd, crate_dir},
        {:env, cargo_env()}
      ])

    collect(port, [], [])
  rescue
    error in ErlangError -> {:error, error.original}
  end

  defp collect(port, partial, messages) do
    receive do
      {^port, {:data, {:noeol, chunk}}} ->
        collect(port, [partial | chunk], messages)

      {^port, {:data, {:eol, chunk}}} ->
        line = IO.iodata_to_binary([partial | chunk])
        collect(port, [], [message(line) | messages])

      {^port, {:exit_status, status}} ->
        {:ok, status, Enum.reverse(messages)}
    end
  end

  defp message(line) do
    with "{" <> _ <- line,
         {:ok, %{"reason" => _} = message} <- JSON.decode(line) do
      case message do
        %{"reason" => "compiler-message", "message" => %{"rendered" => rendered}}
        when is_binary(rendered) ->
          IO.write(:stderr, rendered)

        _ ->
          :ok
      end

      message
    else
      _ ->
        IO.puts(:stderr, line)
        {:text, line}
    end
  end

  defp built_library(messages) do
    Enum.find_value(messages, fn
      %{"reason" => "compiler-artifact", "target" => %{"name" => @crate, "kind" => kinds}} = m ->
        "cdylib" in kinds and Enum.find(m["filenames"], &library_file?/1)

      _ ->
        nil
    end)
  end

  defp library_file?(file), do: Path.extname(file) in [".so", ".dylib", ".dll"]

  defp rustc_diagnostics(messages, root, levels) do
    for %{"reason" => "compiler-message", "message" => message} = m <- messages,
        message["level"] in levels,
        levels == ["error"] or get_in(m, ["target", "name"]) == @crate,
        span = Enum.find(message["spans"] || [], & &1["is_primary"]) do
      %Diagnostic{
        compiler_name: @crate,
        file: Path.expand(span["file_name"], root),
        message: message["message"],
        position: {span["line_start"], span["column_start"]},
        severity: String.to_existing_atom(message["level"])
      }
    end
  end

  defp failure_message(status, messages, errors) do
    text = text(messages)

    hints =
      [
        errors == [] &&
          "The crate needs Rust 1.91 or newer (`rustup update`) and a C linker " <>
            "(`apt-get install gcc`).",
        text =~ "--locked" &&
          "Cargo.lock must match the Cargo.toml files: the build uses it as it is (--locked).",
        offline?() &&
          "CARGO_NET_OFFLINE is set, so cargo downloaded nothing: fetch the crates beforehand " <>
            "(`cargo fetch --locked` in native/#{@crate}) or vendor them.",
        musl?(text) && musl_hint()
      ]
      |> Enum.filter(& &1)
      |> Enum.join("\n")

    """
    cargo build of the #{@crate} NIF failed (exit status #{status}); its output is above.
    #{hints}\
    """
  end

  defp no_library_message(messages) do
    text = text(messages)

    """
    cargo built the #{@crate} crate but no shared library of it: its messages name no cdylib \
    file of #{@crate}. native/#{@crate}/Cargo.toml must keep crate-type "cdylib".\
    #{if musl?(text), do: "\n" <> musl_hint()}
    """
  end

  # Everything cargo and rustc said, as text, to look for the cause of a failure in.
  defp text(messages) do
    messages
    |> Enum.map(fn
      {:text, line} -> line
      %{"message" => %{"rendered" => rendered}} when is_binary(rendered) -> rendered
      _ -> ""
    end)
    |> Enum.join("\n")
    |> String.replace(~r/\e\[[0-9;]*m/, "")
  end

  defp musl?(text) do
    Enum.any?(
      [text, System.get_env("CARGO_BUILD_TARGET", ""), to_string(host())],
      &(&1 =~ ~r/-musl/)
    )
  end

  defp host, do: :erlang.system_info(:system_architecture)

  defp musl_hint do
    """
    On a musl target (Alpine) a NIF must link the C library dynamically: \
    native/#{@crate}/.cargo/config.toml passes `-C target-feature=-crt-static` for musl targets, \
    but RUSTFLAGS or CARGO_ENCODED_RUSTFLAGS, when set, replace it, so add the flag to them. \
    A target whose standard library is missing is added with `rustup target add <target>`.\
    """
  end

  ## Installing and the manifest

  # A VM may have the old file mapped: writing into it would corrupt that VM's code, while a
  # rename gives the new file a new inode and leaves the old one to whoever still maps it.
  defp install(source, destination) do
    temporary = "#{destination}.tmp-#{:os.getpid()}-#{unique()}"

    with {:mkdir, :ok} <- {:mkdir, File.mkdir_p(Path.dirname(destination))},
         {:copy, :ok} <- {:copy, File.cp(source, temporary)},
         {:rename, :ok} <- {:rename, File.rename(temporary, destination)} do
      :ok
    else
      {step, {:error, reason}} ->
        File.rm(temporary)

        error(
          "installing the #{@crate} NIF from #{source} as #{destination} failed at " <>
            "#{step}: #{:file.format_error(reason)}"
        )
    end
  end

  defp unique, do: System.unique_integer([:positive])

  defp read_manifest do
    with {:ok, binary} <- File.read(manifest_path()) do
      {:ok, :erlang.binary_to_term(binary, [:safe])}
    end
  rescue
    ArgumentError -> :error
  end

  defp write_manifest(inputs) do
    with :ok <- File.mkdir_p(Path.dirname(manifest_path())),
         :ok <- File.write(manifest_path(), :erlang.term_to_binary(inputs)) do
      :ok
    else
      {:error, reason} ->
        error("writing #{manifest_path()} failed: #{:file.format_error(reason)}")
    end
  end

  # Failures that belong to no Rust file are reported against the crate's Cargo.toml, or the
  # prebuilt library.
  defp error(message, file \\ nil), do: {:error, [diagnostic(message, file)]}

  defp diagnostic(message, file \\ nil) do
    %Diagnostic{
      compiler_name: @crate,
      file:
        file ||
          Path.join(Path.dirname(Mix.Project.project_file()), "native/#{@crate}/Cargo.toml"),
      message: String.trim_trailing(message),
      position: nil,
      severity: :error
    }
  end
end

defmodule Mix.Tasks.Compile.ClusterSrv.JSON do
  @moduledoc false
  # Enough JSON (RFC 8259) to read cargo's messages: Elixir 1.14 and OTP 25 have no decoder,
  # and the compiler can use no package. Objects become maps with string keys.

  @spec decode(binary) :: {:ok, term} | :error
  def decode(text) when is_binary(text) do
    case value(skip(text)) do
      {value, rest} -> if skip(rest) == "", do: {:ok, value}, else: :error
    end
  catch
    :invalid -> :error
  end

  defp value(<<?{, rest::binary>>), do: object(skip(rest))
  defp value(<<?[, rest::binary>>), do: array(skip(rest))
  defp value(<<?", rest::binary>>), do: string(rest, [])
  defp value(<<"true", rest::binary>>), do: {true, rest}
  defp value(<<"false", rest::binary>>), do: {false, rest}
  defp value(<<"null", rest::binary>>), do: {nil, rest}
  defp value(<<c, _::binary>> = text) when c == ?- or c in ?0..?9, do: number(text)
  defp value(_), do: throw(:invalid)

  defp object(<<?}, rest::binary>>), do: {%{}, rest}
  defp object(text), do: members(text, %{})

  defp members(<<?", rest::binary>>, acc) do
    {key, rest} = string(rest, [])

    case skip(rest) do
      <<?:, rest::binary>> ->
        {value, rest} = value(skip(rest))
        acc = Map.put(acc, key, value)

        case skip(rest) do
          <<?,, rest::binary>> -> members(skip(rest), acc)
          <<?}, rest::binary>> -> {acc, rest}
          _ -> throw(:invalid)
        end

      _ ->
        throw(:invalid)
    end
  end

  defp members(_, _), do: throw(:invalid)

  defp array(<<?], rest::binary>>), do: {[], rest}
  defp array(text), do: elements(text, [])

  defp elements(text, acc) do
    {value, rest} = value(text)

    case skip(rest) do
      <<?,, rest::binary>> -> elements(skip(rest), [value | acc])
      <<?], rest::binary>> -> {Enum.reverse([value | acc]), rest}
      _ -> throw(:invalid)
    end
  end

  defp string(text, acc) do
    case :binary.match(text, ["\"", "\\"]) do
      {at, 1} ->
        <<chunk::binary-size(at), special, rest::binary>> = text

        case special do
          ?" -> {IO.iodata_to_binary([acc | chunk]), rest}
          ?\\ -> escape(rest, [acc | chunk])
        end

      :nomatch ->
        throw(:invalid)
    end
  end

  for {char, meaning} <-
        [{?", ?"}, {?\\, ?\\}, {?/, ?/}, {?b, ?\b}, {?f, ?\f}] ++
          [{?n, ?\n}, {?r, ?\r}, {?t, ?\t}] do
    defp escape(<<unquote(char), rest::binary>>, acc), do: string(rest, [acc, unquote(meaning)])
  end

  defp escape(<<?u, code::binary-4, rest::binary>>, acc) do
    case {hex(code), rest} do
      {high, <<"\\u", low::binary-4, rest::binary>>} when high in 0xD800..0xDBFF ->
        case hex(low) do
          low when low in 0xDC00..0xDFFF ->
            string(rest, [acc, <<0x10000 + (high - 0xD800) * 0x400 + (low - 0xDC00)::utf8>>])

          _ ->
            throw(:invalid)
        end

      {surrogate, _} when surrogate in 0xD800..0xDFFF ->
        throw(:invalid)

      {point, _} ->
        string(rest, [acc, <<point::utf8>>])
    end
  end

  defp escape(_, _), do: throw(:invalid)

  defp hex(digits) do
    if digits =~ ~r/\A[0-9a-fA-F]{4}\z/, do: String.to_integer(digits, 16), else: throw(:invalid)
  end

  defp number(text) do
    case Regex.run(~r/\A-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/, text) do
      [digits] -> {String.to_integer(digits), drop(text, digits)}
      [digits | _] -> {elem(Float.parse(digits), 0), drop(text, digits)}
      nil -> throw(:invalid)
    end
  end

  defp drop(text, prefix),
    do: binary_part(text, byte_size(prefix), byte_size(text) - byte_size(prefix))

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip(rest)
  defp skip(text), do: text
end
