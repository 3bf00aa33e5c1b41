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
  def resolver_new(_nameservers, _search, _ndots, _timeout_ms, _attempts, _deadline_ms),
    do: not_loaded()

  @doc false
  def resolver_plan(_resolver), do: not_loaded()

  @doc false
  def start_lookup(_resolver, _name, _fill_addresses, _tag), do: not_loaded()

  @doc false
  def start_discover(_resolver, _name, _basename, _domain, _naming, _max_nodes, _tag),
    do: not_loaded()

  @doc false
  def node_names(_candidates, _basename, _domain, _naming, _max_nodes), do: not_loaded()

  if Mix.env() == :test do
    @doc false
    def test_panic(_site, _tag), do: not_loaded()
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
        Run `mix compile` (or `mix deps.compile libcluster_srv` in an app that depends on it) to build \
        it with cargo; the library is installed at priv/native/cluster_srv.so.\
        """
    end
  end
end
