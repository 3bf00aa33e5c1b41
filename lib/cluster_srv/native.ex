defmodule ClusterSRV.Native do
  @moduledoc false
  # The NIF stubs. Every NIF the crate exports has a stub here, or the library refuses to load.
  # Callers use ClusterSRV.Resolver; nothing outside this project calls these directly.

  @on_load :load
  @load_error_key {__MODULE__, :load_error}
  @loaded_key {__MODULE__, :loaded}

  @doc false
  def load do
    result =
      case :code.priv_dir(:libcluster_srv) do
        {:error, reason} -> {:error, {:no_priv_dir, reason}}
        priv -> :erlang.load_nif(String.to_charlist(Path.join(priv, "native/cluster_srv")), 0)
      end

    case result do
      :ok ->
        :persistent_term.erase(@load_error_key)
        :persistent_term.put(@loaded_key, true)
        :ok

      # The module is being loaded again (a hot upgrade, IEx's r/1) while its current code
      # holds the library: rustler has no upgrade support, so the new code is refused and the
      # running code keeps the loaded library.
      {:error, reason} ->
        if :erlang.module_loaded(__MODULE__) and :persistent_term.get(@loaded_key, false) do
          :logger.error(
            "ClusterSRV.Native was not reloaded (#{inspect(reason)}): rustler NIF libraries " <>
              "cannot be upgraded in a running VM. The loaded library stays in use; restart " <>
              "the VM to load a new build."
          )

          :reload_refused
        else
          # Loading the module must still succeed, so that a call gets our explanation below
          # rather than an :undef.
          :persistent_term.put(@load_error_key, reason)
          :ok
        end
    end
  end

  @doc false
  def resolver_new(
        _nameservers,
        _vm_settings,
        _search,
        _ndots,
        _timeout_ms,
        _attempts,
        _deadline_ms
      ),
      do: not_loaded()

  @doc false
  def resolver_plan(_resolver), do: not_loaded()

  @doc false
  def start_lookup(_resolver, _name, _type, _fill_addresses, _tag), do: not_loaded()

  @doc false
  def start_discover_all(_resolver, _sources, _max_nodes, _tag), do: not_loaded()

  @doc false
  def start_discover(_resolver, _name, _basename, _domain, _naming, _max_nodes, _tag),
    do: not_loaded()

  @doc false
  def node_names(_candidates, _basename, _domain, _naming, _max_nodes), do: not_loaded()

  @doc false
  def node_names_dirty(_candidates, _basename, _domain, _naming, _max_nodes), do: not_loaded()

  if Mix.env() == :test do
    @doc false
    def test_panic(_site, _tag), do: not_loaded()
  end

  # The benchmark's probe: dev builds only, as the Mix compiler builds the crate for dev.
  if Mix.env() == :dev do
    @doc false
    def probe_lookup(_resolver, _name, _tag), do: not_loaded()
    @doc false
    def probe_dirty_lookup(_resolver, _name, _timeout_ms), do: not_loaded()
  end

  defp not_loaded do
    case :persistent_term.get(@load_error_key, :unknown) do
      # The code that held the library was deleted, and this code cannot load it again.
      {:upgrade, _} ->
        raise RuntimeError, """
        the cluster_srv NIF cannot be loaded again in this VM: ClusterSRV.Native was reloaded \
        after its old code, which still holds the library, was deleted, and rustler NIF \
        libraries cannot be upgraded in a running VM. Restart the VM to load it.\
        """

      reason ->
        raise RuntimeError, """
        the cluster_srv NIF is not loaded (#{inspect(reason)}).
        #{load_failure(reason)}
        This VM: OTP #{:erlang.system_info(:otp_release)}, NIF version \
        #{:erlang.system_info(:nif_version)}, #{:erlang.system_info(:system_architecture)}.\
        """
    end
  end

  # Why the library did not load, in terms a user can act on: which file, what is wrong with it
  # for this VM, and what to do. `reason` is what :erlang.load_nif/2 returned.
  defp load_failure(reason) do
    case :code.priv_dir(:libcluster_srv) do
      {:error, _} ->
        "The libcluster_srv application is not in the code path. " <> build_hint()

      priv ->
        file = Path.join(priv, "native/cluster_srv.so")
        load_failure(reason, file, File.regular?(file) && elf_kind(file))
    end
  end

  defp load_failure(_reason, file, false), do: "#{file} does not exist. " <> build_hint()

  defp load_failure(reason, file, kind) do
    text = reason |> inspect() |> String.replace("\\'", "'")
    vm = elf_kind("/proc/self/exe")

    cond do
      kind != vm and is_tuple(kind) and is_tuple(vm) ->
        "#{file} is a #{describe(kind)} ELF file, but this VM runs #{describe(vm)} code. " <>
          rebuild_hint()

      needed = Regex.run(~r/needs (erts-[\d.]+) or newer/, text) ->
        "#{file} was built for a newer NIF version than this VM's: it needs " <>
          "#{List.last(needed)} or newer, and this VM is erts-#{:erlang.system_info(:version)}. " <>
          rebuild_hint()

      text =~ "Failed to find library init function" ->
        "#{file} is a shared library but not a NIF: build it with `--features nif`. " <>
          rebuild_hint()

      text =~ "Function not found" ->
        "#{file} is a NIF from another version of libcluster_srv. " <> rebuild_hint()

      # glibc's dlopen, then musl's, when a library the NIF links against is missing.
      missing =
          Regex.run(~r/([\w.+-]+\.so[\w.]*): cannot open shared object file/, text) ||
            Regex.run(~r/Error loading shared library ([\w.+-]+)/, text) ->
        missing_dependency(file, List.last(missing))

      true ->
        "#{file} exists but this VM could not load it. " <> rebuild_hint()
    end
  end

  defp missing_dependency(file, library) do
    if library == Path.basename(file) do
      "#{file} could not be opened. " <> rebuild_hint()
    else
      musl =
        if library =~ "musl", do: " That is musl's C library: it was built on Alpine.", else: ""

      "#{file} needs #{library}, which this system does not have.#{musl} A NIF built against " <>
        "glibc (Debian, Ubuntu) does not load on musl (Alpine), nor the other way round. " <>
        rebuild_hint()
    end
  end

  defp build_hint do
    "Run `mix compile` (or `mix deps.compile libcluster_srv` in an app that depends on it) to " <>
      "build it with cargo, or set CLUSTER_SRV_NIF_PATH to a prebuilt library when compiling; " <>
      "the library is installed at priv/native/cluster_srv.so."
  end

  defp rebuild_hint do
    "Build it for this VM and machine: `mix compile --force` where the VM runs, or set " <>
      "CLUSTER_SRV_NIF_PATH, when compiling, to a library built from this version of the crate " <>
      "for #{:erlang.system_info(:system_architecture)}."
  end

  # {class, byte order, machine} from an ELF header, or nil for anything else (or no file).
  defp elf_kind(file) do
    case File.open(file, [:read, :binary], &IO.binread(&1, 20)) do
      {:ok, <<0x7F, "ELF", class, 1, _::binary-10, _type::16, machine::little-16>>} ->
        {class, :little, machine}

      {:ok, <<0x7F, "ELF", class, 2, _::binary-10, _type::16, machine::big-16>>} ->
        {class, :big, machine}

      _ ->
        nil
    end
  end

  @machines %{
    3 => "x86",
    8 => "MIPS",
    20 => "PowerPC",
    21 => "PowerPC 64",
    22 => "S390",
    40 => "ARM",
    62 => "x86-64",
    183 => "AArch64",
    243 => "RISC-V"
  }

  defp describe({class, order, machine}) do
    bits = %{1 => "32-bit", 2 => "64-bit"}[class] || "ELF class #{class}"
    "#{bits} #{order}-endian #{@machines[machine] || "machine #{machine}"}"
  end
end
