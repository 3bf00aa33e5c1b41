defmodule ClusterSRV.Native do
  @moduledoc false
  # The NIF stubs. Every NIF the crate exports has a stub here, or the library refuses to load.
  # Callers use ClusterSRV.Resolver; nothing outside this project calls these directly.

  @on_load :load
  @load_error_key {__MODULE__, :load_error}

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
        :ok

      # Loading the module must still succeed, so that a call gets our explanation below
      # rather than an :undef.
      {:error, reason} ->
        :persistent_term.put(@load_error_key, reason)
        :ok
    end
  end

  @doc false
  def resolver_new(_nameservers, _timeout_ms, _attempts), do: not_loaded()

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
    reason = :persistent_term.get(@load_error_key, :unknown)

    raise RuntimeError, """
    the cluster_srv NIF is not loaded (#{inspect(reason)}).
    Run `mix compile` (or `mix deps.compile libcluster_srv` in an app that depends on it) to build \
    it with cargo; the library is installed at priv/native/cluster_srv.so.\
    """
  end
end
