defmodule ClusterSRV.Strategy do
  @options_path Path.join(__DIR__, "options.md")
  @external_resource @options_path

  @moduledoc """
  A [libcluster](https://hex.pm/packages/libcluster) strategy that forms a cluster from DNS: a
  drop-in for `Cluster.Strategy.Kubernetes.DNSSRV` (change the module name, nothing else).

      config :libcluster,
        topologies: [
          myapp: [
            strategy: ClusterSRV.Strategy,
            config: [service: "myapp-headless", namespace: "default", application_name: "myapp"]
          ]
        ]

  Every `polling_interval` it asks DNS for the SRV records of
  `<service>.<namespace>.svc.<cluster domain>`, turns each valid target into the node name
  `<application_name>@<target>`, connects the nodes it does not see yet, concurrently, and
  disconnects the nodes it knew that a successful answer no longer lists. Without libcluster,
  the same strategy runs as one child, `{ClusterSRV, opts}`.

  ## Options

  #{File.read!(@options_path)}

  The topology's `connect`, `disconnect` and `list_nodes` are honoured as libcluster defines
  them. A missing or bad key fails the start with an `ArgumentError` naming the key, the value
  and what is expected; an unknown key is logged.

  ## Failures

  A failed lookup (a timeout, SERVFAIL, an answer too large for one DNS message), or a failed
  part of one (one query of several, one record type, a target's address with
  `node_naming: :ip`), disconnects no one: only a successful answer that no longer lists a node
  removes it. A query that keeps failing while others answer keeps what it listed for 10
  polling intervals, or `prune_grace` if longer. Each failure is logged when it starts and when
  its kind changes, and a line says when it ends. When the node itself shuts down, it tells the
  strategies of its topology on the other nodes, which then do not connect it again while DNS
  still lists it. The guides have the details.

  ## Logs and telemetry

  Logs carry libcluster's prefix, `[libcluster:<topology>]`; debug lines appear only with
  `config :libcluster, debug: true`. When `:telemetry` is loaded (libcluster brings it), it
  emits libcluster's `[:libcluster, :connect_node | :disconnect_node, :ok | :error]` events,
  and `[:cluster_srv, :lookup]` (`%{duration, records, nodes}`, `%{topology, query, result}`),
  `[:cluster_srv, :removal, :deferred]` (`%{grace_ms}`, `%{topology, node, due}`),
  `[:cluster_srv, :removal, :done]` (`%{missing_ms}`, `%{topology, node}`) and
  `[:cluster_srv, :self_check]` (`%{misses}`, `%{topology, node, cause, dialed}`).

  `ClusterSRV.status/1` and `ClusterSRV.await/2` find a strategy started by libcluster's
  `Cluster.Supervisor` by its topology's name.
  """
  use GenServer

  require Logger

  # Polling intervals a query that keeps failing keeps what it listed while the other queries
  # answer (or prune_grace, when longer); see ClusterSRV.Membership.
  @source_grace_polls 10

  alias ClusterSRV.{Config, Connector, Lookup, Membership, Record, SelfCheck, Topology}

  defstruct [
    :topology,
    :lookup,
    :connector,
    :membership,
    :timer,
    :last_lookup,
    :self_check,
    telemetry?: false
  ]

  @doc false
  def child_spec(args) do
    %{id: __MODULE__, type: :worker, start: {__MODULE__, :start_link, [args]}}
  end

  @doc """
  Starts the strategy, as libcluster's `Cluster.Supervisor` does: with `[state]`, where `state`
  is a `%Cluster.Strategy.State{}` (or a map with its fields: `topology`, `connect`,
  `disconnect`, `list_nodes`, `config` and `meta`).

  It validates the config first and raises `ArgumentError` for a missing or bad key. It returns
  at once: the first lookup runs right after the process has started.
  """
  def start_link([state]) do
    start_built(build!(state))
  end

  def start_link(other) do
    raise ArgumentError,
          "expected [%Cluster.Strategy.State{}] as libcluster passes it, got: #{inspect(other)}"
  end

  @doc false
  # Looks up `config` once and returns what the strategy would act on, without connecting.
  #
  # It runs the same query building, lookup and node naming as the polling loop, blocking the
  # caller. `mix cluster_srv.check` uses it.
  #
  #     {:ok, %{query: query, records: records, nodes: nodes, rejected: rejected}} =
  #       ClusterSRV.Strategy.discover(service: "myapp-headless", namespace: "default",
  #                                    application_name: "myapp")
  @spec discover(keyword() | Config.t()) ::
          {:ok, %{query: String.t(), records: [Record.t()], nodes: [node()], rejected: list()}}
          | {:error, term()}
  def discover(config) when is_list(config) do
    {config, _unknown} = Config.strategy!(config)
    discover(config)
  end

  def discover(%Config{} = config) do
    with {:ok, found} <- Lookup.discover(config), do: {:ok, Map.put(found, :query, config.query)}
  end

  @doc false
  # The name a strategy of `topology` registers under, so that ClusterSRV.status/1 and
  # ClusterSRV.await/2 find strategies started by libcluster's Cluster.Supervisor.
  def registered_name(topology) when is_atom(topology), do: Module.concat(__MODULE__, topology)

  # -- Start -----------------------------------------------------------------------------------

  @doc false
  # Starts the loop from what build!/1 validated. Shared with the standalone ClusterSRV.
  def start_built({%Topology{}, %Lookup{}} = built, opts \\ []),
    do: GenServer.start_link(__MODULE__, built, opts)

  @doc false
  # Validates libcluster's state and prepares the lookups, raising in the caller. Shared with
  # the standalone ClusterSRV.
  def build!(state) do
    topology = Topology.new!(state)
    {topology, Lookup.new!(topology.config)}
  end

  @impl true
  def init({topology, lookup}) do
    config = topology.config

    state = %__MODULE__{
      topology: topology,
      lookup: lookup,
      connector: Connector.new(topology.connect, topology.disconnect, config.connect_timeout),
      membership:
        Membership.new(
          self: Node.self(),
          sources: config.sources,
          context: [domain: config.domain, max_nodes: config.max_nodes],
          meta: topology.meta,
          prune: config.prune,
          prune_grace: config.prune_grace,
          source_grace: max(config.prune_grace, @source_grace_polls * config.polling_interval),
          connect_log: config.log
        ),
      telemetry?: telemetry_available?()
    }

    register(state)

    # Jobs and the user's resolver function run in linked processes, so that they end with the
    # strategy; trapping exits turns their ends into messages, which are ignored here (their
    # monitors report them).
    Process.flag(:trap_exit, true)

    for key <- topology.unknown do
      log(state, :warning, "unknown config key #{inspect(key)} is ignored (a typo?)")
    end

    {:ok, state, {:continue, :poll}}
  end

  # One strategy per topology name can be found by it; a second one still runs, by pid only.
  defp register(state) do
    Process.register(self(), registered_name(state.topology.name))
  rescue
    ArgumentError ->
      log(
        state,
        :warning,
        "another strategy of this topology runs in this VM; ClusterSRV.status/1 finds that " <>
          "one by the topology's name, and this one by its pid"
      )
  end

  # -- Events in -------------------------------------------------------------------------------

  @impl true
  def handle_call(:status, _from, state), do: {:reply, status(state), state}

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_lookup(state)}

  @impl true
  def handle_info({:poll, timer}, %{timer: timer} = state),
    do: {:noreply, start_lookup(%{state | timer: nil})}

  def handle_info({:cluster_srv_leaving, node}, state) when is_atom(node) do
    now = System.monotonic_time(:millisecond)
    {membership, actions} = Membership.peer_leaving(state.membership, node, now)
    {:noreply, perform(%{state | membership: membership}, actions)}
  end

  def handle_info({:cluster_srv_self_check, ref, result}, %{self_check: {ref, monitor}} = state) do
    Process.demonitor(monitor, [:flush])
    {:noreply, self_check_done(state, result)}
  end

  # The self-check died before it could say anything (a user's resolver that exits, say).
  def handle_info(
        {:DOWN, monitor, :process, _pid, reason},
        %{self_check: {_ref, monitor}} = state
      ),
      do: {:noreply, self_check_done(state, {:error, {:self_check_crashed, reason}})}

  def handle_info(message, state) do
    case Lookup.handle_info(state.lookup, message) do
      {:done, result, duration, lookup} ->
        {:noreply, lookup_done(%{state | lookup: lookup}, result, duration)}

      :unknown ->
        {:noreply, job_message(state, message)}
    end
  end

  # Late replies of lookups given up on, stale timers, the exits of linked helpers, and anything
  # else fall through both and are dropped.
  defp job_message(state, message) do
    case Connector.handle_info(state.connector, message) do
      {:done, kind, node, outcome, connector} ->
        {membership, actions} = Membership.job_done(state.membership, kind, node, outcome)
        perform(%{state | connector: connector, membership: membership}, actions)

      {:running, connector} ->
        %{state | connector: connector}

      :unknown ->
        state
    end
  end

  defp start_lookup(state) do
    before = state.lookup.resolver

    case Lookup.start(state.lookup) do
      {:ok, lookup} ->
        servers_changed(state, before, lookup.resolver)
        %{state | lookup: lookup}

      {:done, failed, duration, lookup} ->
        servers_changed(state, before, lookup.resolver)
        lookup_done(%{state | lookup: lookup}, failed, duration)
    end
  end

  defp servers_changed(state, %{servers: old}, %{servers: new} = resolver) when old != new do
    log(
      state,
      :info,
      "now asking #{Enum.join(new, ", ")} (#{resolver.source}), not #{Enum.join(old, ", ")}"
    )
  end

  defp servers_changed(_state, _before, _now), do: :ok

  defp lookup_done(state, results, duration) do
    now = System.monotonic_time(:millisecond)
    results = for {source, result} <- results, do: {{source.name, source.type}, result}
    outcome = Membership.outcome(results)

    # The wall-clock time as an integer: status/1 makes it a DateTime when asked.
    last = %{
      at: System.system_time(:microsecond),
      result: outcome,
      duration_us: System.convert_time_unit(duration, :native, :microsecond)
    }

    if state.telemetry? do
      records = Enum.sum(for {_, {:ok, %{records: count}}} <- results, do: count)
      nodes = Enum.uniq(for {_, {:ok, %{nodes: nodes}}} <- results, node <- nodes, do: node)

      emit(
        state,
        [:cluster_srv, :lookup],
        %{duration: duration, records: records, nodes: length(nodes)},
        %{query: state.topology.config.query, result: outcome}
      )
    end

    connected = Topology.list_nodes(state.topology)
    {membership, actions} = Membership.lookup_done(state.membership, results, connected, now)

    %{state | membership: membership, last_lookup: last}
    |> perform(actions)
    |> schedule_poll()
  end

  # Exactly one timer chain: a poll is scheduled only when a lookup has finished.
  # The timer's message carries its own reference, so no other message can start a poll.
  defp schedule_poll(%{timer: nil} = state) do
    timer = make_ref()
    config = state.topology.config

    Process.send_after(
      self(),
      {:poll, timer},
      next_wait(config.polling_interval, config.polling_jitter)
    )

    %{state | timer: timer}
  end

  # The interval, moved earlier or later by up to `jitter` of it at random, so that pods
  # started together (a rollout) spread their polls rather than reach the DNS at once.
  defp next_wait(interval, jitter) when jitter == 0, do: interval

  defp next_wait(interval, jitter) do
    spread = round(interval * jitter)
    max(interval - spread + :rand.uniform(2 * spread + 1) - 1, 1)
  end

  # -- Actions out -----------------------------------------------------------------------------

  defp perform(state, actions), do: Enum.reduce(actions, state, &perform_one/2)

  defp perform_one({kind, node}, state) when kind in [:connect, :disconnect],
    do: %{state | connector: Connector.start(state.connector, kind, node)}

  defp perform_one(:self_check, state), do: %{state | self_check: start_self_check(state)}

  defp perform_one({:log, level, message}, state) do
    log(state, level, message)
    state
  end

  defp perform_one({:emit, event, measurements, metadata}, state) do
    emit(state, event, measurements, metadata)
    state
  end

  # Looks up once more, with the records this time, and says why this node's name is missing.
  # It runs in a linked process of its own, bounded as a lookup is, and monitored: if it dies
  # before it replies, the strategy hears of it, and the check runs again later.
  defp start_self_check(state) do
    config = state.topology.config
    strategy = self()
    me = Node.self()
    wait = ClusterSRV.Resolver.reply_timeout(config.resolver_options, fill_addresses: true)
    ref = make_ref()

    {_pid, monitor} =
      :erlang.spawn_opt(
        fn ->
          task = Task.async(fn -> Lookup.discover(config) end)

          result =
            case Task.yield(task, wait) || Task.shutdown(task, :brutal_kill) do
              {:ok, {:ok, found}} ->
                {:ok, SelfCheck.diagnose(me, config, found, SelfCheck.host())}

              {:ok, {:error, reason}} ->
                {:error, reason}

              nil ->
                {:error, :timeout}
            end

          send(strategy, {:cluster_srv_self_check, ref, result})
        end,
        [:link, :monitor]
      )

    {ref, monitor}
  end

  defp self_check_done(state, result) do
    {membership, actions} = Membership.self_check_done(state.membership, result)
    perform(%{state | membership: membership, self_check: nil}, actions)
  end

  # -- Status and leaving ------------------------------------------------------------------------

  defp status(state) do
    known = Membership.status(state.membership)
    tracked = MapSet.union(state.membership.meta, state.membership.listed)

    connected =
      for node <- Topology.list_nodes(state.topology), MapSet.member?(tracked, node), do: node

    Map.merge(known, %{
      topology: state.topology.name,
      query: state.topology.config.query,
      queries:
        for(s <- state.topology.config.sources, do: Map.take(s, [:name, :type, :basename])),
      node: Node.self(),
      last_lookup:
        state.last_lookup &&
          %{state.last_lookup | at: DateTime.from_unix!(state.last_lookup.at, :microsecond)},
      connected: Enum.sort(connected)
    })
  end

  # When the node itself is stopping (SIGTERM in a release, init:stop/0), it leaves: first it
  # tells the strategies of its topology on the nodes this topology knows, so that they do not
  # connect it again while DNS still lists it (a terminating pod stays listed until it has
  # exited); then it refuses new connections, and disconnects with :global.disconnect/0, which
  # tells the others it is leaving, so that they do not see an overlapping partition and
  # disconnect one another. A strategy that stops while the node runs on (a supervisor's
  # restart, Application.stop/1, a test's teardown) leaves every connection as it is: they may
  # be other topologies' or made by hand.
  @impl true
  def terminate(reason, state) do
    if normal?(reason) and Node.self() != :nonode@nohost and
         match?({:stopping, _}, :init.get_status()) do
      leave(state)
    end

    :ok
  end

  defp leave(state) do
    membership = state.membership
    ours = MapSet.union(membership.meta, membership.listed)
    peers = for node <- Node.list(), MapSet.member?(ours, node), do: node
    :erpc.multicall(peers, __MODULE__, :peer_leaving, [state.topology.name, Node.self()], 1_000)

    # No one may connect this node again before it is gone: a peer whose connect was already on
    # its way when the word came would pull it back in. net_kernel's allow list cannot be
    # undone, which is fine for a node that is stopping.
    :net_kernel.allow([Node.self()])

    left = if function_exported?(:global, :disconnect, 0), do: :global.disconnect(), else: []

    log(
      state,
      :info,
      "leaving the cluster on shutdown: told #{length(peers)} node(s) of this topology, and " <>
        "disconnected from #{length(left)} with :global.disconnect/0"
    )
  end

  @doc false
  # Called on this node by a strategy of `topology` that is leaving on `node`.
  def peer_leaving(topology, node) when is_atom(topology) and is_atom(node) do
    case Process.whereis(registered_name(topology)) do
      nil -> :ok
      pid -> send(pid, {:cluster_srv_leaving, node})
    end

    :ok
  end

  defp normal?(reason), do: reason in [:normal, :shutdown] or match?({:shutdown, _}, reason)

  # libcluster's logs: the [libcluster:<topology>] prefix, and debug lines only with
  # `config :libcluster, debug: true`. A debug message may be a function, so that a poll builds
  # no text unless debug is on.
  defp log(state, :debug, message) do
    app = if state.topology.libcluster?, do: :libcluster, else: :libcluster_srv

    if Application.get_env(app, :debug, false) not in [nil, false, "false"] do
      text = if is_function(message, 0), do: message.(), else: message
      Logger.debug(prefix(state, text))
    end
  end

  defp log(state, level, message), do: Logger.log(level, prefix(state, message))

  # libcluster's prefix under libcluster; our own for {ClusterSRV, opts}, which runs without it.
  defp prefix(%{topology: %{libcluster?: true, name: name}}, message),
    do: "[libcluster:#{name}] #{message}"

  defp prefix(%{topology: %{name: name}}, message), do: "[cluster_srv:#{name}] #{message}"

  # :telemetry counts when it is loaded, or its application is (libcluster's dependency is,
  # before libcluster starts a strategy). Asking the code server for a module that is not
  # there searches the whole code path, over a millisecond at every start in an interactive VM.
  defp telemetry_available? do
    (:erlang.module_loaded(:telemetry) or Application.spec(:telemetry, :vsn) != nil) and
      Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
  end

  defp emit(%{telemetry?: false}, _event, _measurements, _metadata), do: :ok

  defp emit(state, event, measurements, metadata) do
    # :telemetry is libcluster's dependency, not ours: call it without a compile-time reference.
    apply(:telemetry, :execute, [
      event,
      measurements,
      Map.put(metadata, :topology, state.topology.name)
    ])
  end
end
