defmodule ClusterSRV do
  @options_path Path.join(__DIR__, "cluster_srv/options.md")
  @external_resource @options_path

  @moduledoc """
  Forms an Erlang/Elixir cluster from DNS: one child in your supervision tree, without
  libcluster (with libcluster, use `ClusterSRV.Strategy`).

      children = [
        # Phoenix's dns_cluster form: nodes named <this node's basename>@<address>
        {ClusterSRV, query: Application.get_env(:my_app, :dns_cluster_query) || :ignore},
        # or a Kubernetes headless service, nodes named myapp@<pod's DNS name>
        {ClusterSRV, service: "myapp-headless", namespace: "default", application_name: "myapp"}
      ]

  Every poll asks DNS, connects the nodes it lists that are not connected yet, and (unless in
  dns_cluster's form) disconnects the nodes it connected that DNS no longer lists. A failed
  lookup, or a failed part of one, disconnects no one.

  ## Options

  #{File.read!(@options_path)}

  And, as libcluster's topology keys:

  | key | default | meaning |
  |---|---|---|
  | `name` | none | a name to register the process under: an atom, `{:global, term}` or `{:via, module, term}`; it is also the child's id |
  | `topology` | `:cluster_srv` | the name in the logs (`[cluster_srv:<topology>]`) and for `status/1` and `await/2` |
  | `connect`, `disconnect` | `{:net_kernel, :connect_node, []}`, `{:erlang, :disconnect_node, []}` (or the `resolver` module's `connect_node/1`) | `{module, function, args}`, called with the node appended |
  | `list_nodes` | `{:erlang, :nodes, [:connected]}`; dns_cluster: visible nodes only (or the `resolver` module's `list_nodes/0`) | `{module, function, args}` giving the connected nodes |

  A missing or bad key raises `ArgumentError` at start, naming the key, the value and what is
  expected.

  On a node that is not distributed (`iex -S mix` without `--name`) it logs once and returns
  `:ignore`, so the app starts without clustering; in dns_cluster's form it runs anyway and
  warns, as dns_cluster does. On a node with short names it warns once: the names in DNS are
  fully qualified.
  """

  require Logger

  @topology_keys [:connect, :disconnect, :list_nodes, :topology, :name]

  @doc """
  The child spec for `{ClusterSRV, opts}`. Its id is `{ClusterSRV, topology}`, so that several
  topologies can run side by side.

      iex> ClusterSRV.child_spec(service: "s", namespace: "n", application_name: "a")
      %{id: {ClusterSRV, :cluster_srv}, start: {ClusterSRV, :start_link, [[service: "s", namespace: "n", application_name: "a"]]}, type: :worker}
  """
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :name) || Keyword.get(opts, :topology, :cluster_srv)},
      start: {__MODULE__, :start_link, [opts]},
      type: :worker
    }
  end

  @doc """
  Validates `opts` and starts the strategy, or returns `:ignore` when the node is not
  distributed. See the module docs for the options.
  """
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected ClusterSRV options as a keyword list, got: #{inspect(opts)}"
    end

    # dns_cluster's way to turn clustering off, as Phoenix apps do when no query is configured.
    if Keyword.get(opts, :query) == :ignore, do: :ignore, else: start(opts)
  end

  def start_link(opts) do
    raise ArgumentError, "expected ClusterSRV options as a keyword list, got: #{inspect(opts)}"
  end

  defp start(opts) do
    {topology_opts, config} = Keyword.split(opts, @topology_keys)
    topology = Keyword.get(topology_opts, :topology, :cluster_srv)

    unless is_atom(topology) do
      raise ArgumentError,
            "invalid value for :topology: expected an atom naming the topology in the logs, " <>
              "got: #{inspect(topology)}. Example: topology: :myapp"
    end

    name = Keyword.get(topology_opts, :name)

    unless is_nil(name) or is_atom(name) or match?({:global, _}, name) or
             match?({:via, _, _}, name) do
      raise ArgumentError,
            "invalid value for :name: expected a name to register the process under (an atom, " <>
              "{:global, term} or {:via, module, term}), got: #{inspect(name)}. " <>
              "Example: name: MyApp.DNSCluster"
    end

    unless Enum.any?([:query, :service, :namespace], &Keyword.has_key?(config, &1)) do
      raise ArgumentError,
            "missing required key :query: expected the DNS name to ask, as dns_cluster's " <>
              ":query (or :service and :namespace for a Kubernetes headless service), got: " <>
              "#{inspect(opts)}. Example: {ClusterSRV, query: \"myapp.internal\"}"
    end

    dns_cluster? = ClusterSRV.Config.dns_cluster_form?(config)
    defaults = topology_defaults(Keyword.get(config, :resolver), dns_cluster?)

    state = %{
      topology: topology,
      connect: Keyword.get(topology_opts, :connect, defaults.connect),
      disconnect: Keyword.get(topology_opts, :disconnect, {:erlang, :disconnect_node, []}),
      list_nodes: Keyword.get(topology_opts, :list_nodes, defaults.list_nodes),
      config: config,
      meta: nil
    }

    # Validate first: a bad config is a mistake whether or not the node is distributed.
    {topology_state, lookup} = ClusterSRV.Strategy.build!(state)
    built = {%{topology_state | libcluster?: false}, lookup}

    case Node.self() do
      :nonode@nohost when dns_cluster? ->
        # dns_cluster keeps polling on a node that is not distributed, and says so.
        Logger.warning(
          "[cluster_srv:#{topology}] the node is not distributed, so no node can be connected. " <>
            "Start it with a long name: `--name app@host`, or in a release " <>
            "RELEASE_DISTRIBUTION=name and RELEASE_NODE=app@host."
        )

        ClusterSRV.Strategy.start_built(built, if(name, do: [name: name], else: []))

      :nonode@nohost ->
        Logger.info(
          "[cluster_srv:#{topology}] the node is not distributed, so DNS clustering is off. " <>
            "Start it with a long name: `--name app@host`, or in a release " <>
            "RELEASE_DISTRIBUTION=name and RELEASE_NODE=app@host."
        )

        :ignore

      _distributed ->
        if :net_kernel.longnames() != true do
          Logger.warning(
            "[cluster_srv:#{topology}] the node #{inspect(Node.self())} uses short names, but the " <>
              "names found in DNS are fully qualified: start it with `--name` " <>
              "(RELEASE_DISTRIBUTION=name in a release)"
          )
        end

        ClusterSRV.Strategy.start_built(built, if(name, do: [name: name], else: []))
    end
  end

  @doc """
  What a strategy knows, as a map. `topology_or_pid` is the strategy's pid, or its topology's
  name: the `topology` option of `{ClusterSRV, opts}` (default `:cluster_srv`), or the key of a
  libcluster topology.

    * `:topology`, `:query`, `:node` - what it is, what it asks first, and this node's name;
    * `:queries` - everything each poll asks, `%{name: fqdn, type: :srv | :a | :aaaa,
      basename: basename}`, in order (several with a list of queries or of types);
    * `:last_lookup` - `%{at: DateTime.t(), result: :ok | {:error, reason}, duration_us: n}`,
      or `nil` before the first lookup ends;
    * `:listed` - the node names the latest successful answer listed;
    * `:connected` - the nodes `list_nodes` shows that DNS lists or the strategy knows;
    * `:connecting` - the nodes a connect of the strategy's is running for;
    * `:unreachable` - each listed node whose last connect failed, with why;
    * `:pending_removals` - each node DNS dropped whose removal waits for `prune_grace`, with
      the monotonic time (ms) from which the next successful answer still missing it
      disconnects it;
    * `:self_listed` - whether the latest successful answer listed this node (`nil` before the
      first), and `:leaving` - it was listed, and no longer is;
    * `:failures` - polls in a row in which every query failed;
    * `:failing` - each query (`{name, type}`) that fails now, with why.

  Returns `{:error, :not_found}` when no strategy runs under that name.

      ClusterSRV.status(:myapp)
      #=> %{listed: [:"myapp@myapp-0.myapp-headless.default.svc.cluster.local", ...],
      #     connected: [...], last_lookup: %{at: ~U[...], result: :ok, duration_us: 412}, ...}
  """
  @spec status(atom() | pid()) :: map() | {:error, :not_found}
  def status(topology_or_pid) do
    case whereis(topology_or_pid) do
      nil -> {:error, :not_found}
      pid -> GenServer.call(pid, :status)
    end
  catch
    :exit, {:noproc, _} -> {:error, :not_found}
  end

  @doc """
  Waits until at least `min_nodes` nodes, this one included, are connected in the topology
  (`status/1`'s `connected`), and returns `:ok`; or, after `timeout` ms, returns
  `{:error, {:timeout, status}}` with the last status. Options: `:min_nodes` (required, a
  positive integer) and `:timeout` (ms, default 30_000, or `:infinity`).

      :ok = ClusterSRV.await(:myapp, min_nodes: 3, timeout: 60_000)

  To start what needs the cluster (Mnesia, Horde) only once it is there, put
  `{ClusterSRV.Await, topology: :myapp, min_nodes: 3, timeout: 60_000}` in the supervision tree
  after the strategy and before them: its start returns when the cluster is there, and fails
  the supervisor's start at the timeout, so the pod restarts rather than run alone.
  """
  @spec await(atom() | pid(), keyword()) :: :ok | {:error, {:timeout, map()}}
  def await(topology_or_pid, opts) do
    min_nodes = Keyword.fetch!(opts, :min_nodes)
    timeout = Keyword.get(opts, :timeout, 30_000)

    unless is_integer(min_nodes) and min_nodes > 0 do
      raise ArgumentError,
            "invalid value for :min_nodes: expected a positive integer (nodes, this one " <>
              "included), got: #{inspect(min_nodes)}. Example: min_nodes: 3"
    end

    unless timeout == :infinity or (is_integer(timeout) and timeout >= 0) do
      raise ArgumentError,
            "invalid value for :timeout: expected a non-negative integer of milliseconds or " <>
              ":infinity, got: #{inspect(timeout)}. Example: timeout: 30_000"
    end

    # The wait runs in a process of its own: it subscribes to node events, and none of them
    # may be left in the caller's mailbox (a supervisor's, when ClusterSRV.Await starts).
    caller = self()
    ref = make_ref()

    {_pid, monitor} =
      spawn_monitor(fn ->
        caller_monitor = Process.monitor(caller)
        if Node.alive?(), do: :net_kernel.monitor_nodes(true)
        deadline = if timeout != :infinity, do: System.monotonic_time(:millisecond) + timeout
        send(caller, {ref, await_loop(topology_or_pid, min_nodes, deadline, caller_monitor)})
      end)

    receive do
      {^ref, result} ->
        Process.demonitor(monitor, [:flush])
        result

      {:DOWN, ^monitor, :process, _pid, reason} ->
        exit({reason, {__MODULE__, :await, [topology_or_pid, opts]}})
    end
  end

  # Checks again at every node event, and at least every 200 ms: a node another strategy or
  # OTP's global connected counts as well as one of ours. It stops if its caller is gone.
  defp await_loop(topology_or_pid, min_nodes, deadline, caller_monitor) do
    status = status(topology_or_pid)

    cond do
      is_map(status) and length(status.connected) + 1 >= min_nodes ->
        :ok

      deadline && System.monotonic_time(:millisecond) >= deadline ->
        {:error, {:timeout, status}}

      true ->
        wait =
          if deadline, do: min(200, deadline - System.monotonic_time(:millisecond)), else: 200

        receive do
          {event, _node} when event in [:nodeup, :nodedown] -> :ok
          {:DOWN, ^caller_monitor, :process, _pid, reason} -> exit(reason)
        after
          max(wait, 0) -> :ok
        end

        await_loop(topology_or_pid, min_nodes, deadline, caller_monitor)
    end
  end

  defp whereis(pid) when is_pid(pid), do: pid

  # A topology's name, or the `name` a standalone strategy was registered under.
  defp whereis(topology) when is_atom(topology),
    do:
      Process.whereis(ClusterSRV.Strategy.registered_name(topology)) ||
        Process.whereis(topology)

  defp whereis({:global, _} = name), do: GenServer.whereis(name)
  defp whereis({:via, _, _} = name), do: GenServer.whereis(name)
  defp whereis(_other), do: nil

  # libcluster's MFAs, or dns_cluster's: its resolver module's connect_node/1 and list_nodes/0
  # when it has them, and only visible nodes as connected (a hidden node is no peer).
  defp topology_defaults(resolver, dns_cluster?) do
    module? = is_atom(resolver) and resolver != nil and Code.ensure_loaded?(resolver)

    %{
      connect:
        if(module? and function_exported?(resolver, :connect_node, 1),
          do: {resolver, :connect_node, []},
          else: {:net_kernel, :connect_node, []}
        ),
      list_nodes:
        cond do
          module? and function_exported?(resolver, :list_nodes, 0) -> {resolver, :list_nodes, []}
          dns_cluster? -> {:erlang, :nodes, [:visible]}
          true -> {:erlang, :nodes, [:connected]}
        end
    }
  end
end
