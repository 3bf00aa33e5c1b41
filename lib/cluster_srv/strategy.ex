defmodule ClusterSRV.Strategy do
  @default_polling_interval 5_000

  @moduledoc """
  A libcluster strategy that forms a cluster from the SRV records of a headless service: the
  GenServer that carries lookups and job ends to `ClusterSRV.Membership` and performs what it
  decides.

  It is a drop-in for `Cluster.Strategy.Kubernetes.DNSSRV`: the same config keys work unchanged,
  so switching is a matter of changing the module name. Without libcluster, the same strategy
  runs as one child, `{ClusterSRV, opts}` (see `ClusterSRV`).

      config :libcluster,
        topologies: [
          myapp: [
            strategy: ClusterSRV.Strategy,
            config: [
              service: "myapp-headless",
              namespace: "default",
              application_name: "myapp",
              polling_interval: 5_000
            ]
          ]
        ]

  Every `polling_interval` it asks DNS for the SRV records of
  `<service>.<namespace>.svc.<cluster domain>`, turns each target into the node name
  `<application_name>@<target>`, connects to the nodes it does not see yet, and disconnects
  the nodes it knew that DNS no longer lists.

  ## What it does differently from `Kubernetes.DNSSRV`

    * **One poll per interval.** The first lookup runs right after start, then one timer chain.
    * **A failed lookup changes nothing.** A timeout, SERVFAIL (which CoreDNS answers until it
      has synced), REFUSED, NXDOMAIN, an empty answer, or an answer with no valid name
      disconnects no one. A node is disconnected only when a successful answer with at least
      one valid name no longer lists it. A failure is logged when it starts, again when its
      kind changes, and once when it ends.
    * **Connects run concurrently**, in processes linked to the strategy. Every node not tried
      yet is connected at once, however many are listed: a dead pod still listed in DNS costs
      one `net_setuptime` (7 s) for that node only, and a new pod never waits behind dead ones.
      Retries of nodes whose connect failed run at most 16 at a time. A connect or disconnect
      that has not returned after `connect_timeout` is stopped and counted as a failure. A
      queued retry that a newer answer made pointless is dropped. The strategy process itself
      stays free meanwhile (`:sys.get_state/1` answers).
    * **No atom is made from unvalidated DNS data.** A target must be a valid host name under
      the service's domain; at most `max_nodes` names are taken from one answer.
    * **Config is validated at start**: a missing or bad key fails the start with an
      `ArgumentError` naming the key, the value and what is expected; an unknown key is logged.
    * **More query forms**: `port_name` for `_port._proto` names, `query` for any SRV name
      (Consul, Nomad, plain DNS), `nameservers` and `timeout`.

  ## Config

  | key | default | meaning |
  |---|---|---|
  | `service` | required\\* | the headless service's name |
  | `namespace` | required\\* | the service's namespace |
  | `application_name` | required | the nodes' base name, the part before `@` |
  | `polling_interval` | `#{@default_polling_interval}` | ms between lookups |
  | `resolver` | native | `fn charlist -> :inet_res.getbyname/2 result` replacing the native lookup |
  | `cluster_domain` | `$CLUSTER_DOMAIN` or `"cluster.local."` | the cluster's DNS domain |
  | `port_name`, `protocol` | none, `"tcp"` | query `_<port_name>._<protocol>.<service>...` |
  | `query` | none | a full SRV name; replaces `service` and `namespace`\\* |
  | `nameservers` | the VM's resolver settings | servers to ask, see `ClusterSRV.Resolver.new/1` |
  | `timeout`, `attempts` | `2_000`, `2` | per try in ms, total tries |
  | `node_naming` | `:hostname` | `:hostname` (`app@target`) or `:ip` (`app@<pod IP>`) |
  | `max_nodes` | `1_000` | the most node names taken from one answer |
  | `connect_timeout` | `30_000` | ms a connect or disconnect may take before it is stopped and counted as a failure |

  ## A StatefulSet behind a headless service

  Each pod's host name is stable (`myapp-0.myapp-headless.default.svc.cluster.local`), and the
  SRV targets are those host names. Name the nodes after them in `rel/env.sh.eex`:

      export RELEASE_DISTRIBUTION=name
      export RELEASE_NODE=<%= @release.name %>@$(hostname -f)

  and use the config above.

  ## A Deployment with a named port

  A Deployment's pods have no stable host name. Set the pod's `hostname` from its name and
  `subdomain` to the headless service, enable `endpoint_pod_names` in CoreDNS's `kubernetes`
  plugin so the SRV targets are pod names, and query the named port:

      config :libcluster,
        topologies: [
          myapp: [
            strategy: ClusterSRV.Strategy,
            config: [
              service: "myapp-headless",
              namespace: "default",
              application_name: "myapp",
              port_name: "discovery",
              protocol: "tcp"
            ]
          ]
        ]

  which asks `_discovery._tcp.myapp-headless.default.svc.cluster.local.`. Without
  `endpoint_pod_names`, targets are dashed IPs; name the nodes `myapp@$(POD_IP)` and set
  `node_naming: :ip` instead.

  ## Logs and telemetry

  Logs carry libcluster's prefix, `[libcluster:<topology>]`; debug lines appear only with
  `config :libcluster, debug: true`. When `:telemetry` is loaded (libcluster brings it), the
  strategy emits libcluster's `[:libcluster, :connect_node | :disconnect_node, :ok | :error]`
  events with the same measurements and metadata, and for each lookup
  `[:cluster_srv, :lookup]` with measurements `%{duration: native_time, records: count,
  nodes: count}` and metadata `%{topology: t, query: name, result: :ok | {:error, reason}}`.
  """
  use GenServer

  require Logger

  alias ClusterSRV.{Config, Connector, Lookup, Membership, Record, Topology}

  defstruct [:topology, :lookup, :connector, :membership, :timer, telemetry?: false]

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

  @doc """
  Looks up `config` once and returns what the strategy would act on, without connecting.

  It runs the same query building, lookup and node naming as the polling loop, blocking the
  caller. `mix cluster_srv.check` uses it.

      {:ok, %{query: query, records: records, nodes: nodes, rejected: rejected}} =
        ClusterSRV.Strategy.discover(service: "myapp-headless", namespace: "default",
                                     application_name: "myapp")
  """
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

  # -- Start -----------------------------------------------------------------------------------

  @doc false
  # Starts the loop from what build!/1 validated. Shared with the standalone ClusterSRV.
  def start_built({%Topology{}, %Lookup{}} = built), do: GenServer.start_link(__MODULE__, built)

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
          query: config.query,
          context: [domain: config.domain, max_nodes: config.max_nodes],
          meta: topology.meta
        ),
      telemetry?: telemetry_available?()
    }

    # Jobs and the user's resolver function run in linked processes, so that they end with the
    # strategy; trapping exits turns their ends into messages, which are ignored here (their
    # monitors report them).
    Process.flag(:trap_exit, true)

    for key <- topology.unknown do
      log(state, :warning, "unknown config key #{inspect(key)} is ignored (a typo?)")
    end

    {:ok, state, {:continue, :poll}}
  end

  # -- Events in -------------------------------------------------------------------------------

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_lookup(state)}

  @impl true
  def handle_info({:poll, timer}, %{timer: timer} = state),
    do: {:noreply, start_lookup(%{state | timer: nil})}

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

      {:error, reason, lookup} ->
        servers_changed(state, before, lookup.resolver)
        lookup_done(%{state | lookup: lookup}, {:error, reason}, 0)
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

  defp lookup_done(state, result, duration) do
    {records, nodes} =
      case result do
        {:ok, %{records: records, nodes: nodes}} -> {records, length(nodes)}
        {:error, _} -> {0, 0}
      end

    emit(state, [:cluster_srv, :lookup], %{duration: duration, records: records, nodes: nodes}, %{
      query: state.topology.config.query,
      result: Membership.outcome(result)
    })

    connected = Topology.list_nodes(state.topology)
    {membership, actions} = Membership.lookup_done(state.membership, result, connected)

    %{state | membership: membership}
    |> perform(actions)
    |> schedule_poll()
  end

  # Exactly one timer chain: a poll is scheduled only when a lookup has finished.
  # The timer's message carries its own reference, so no other message can start a poll.
  defp schedule_poll(%{timer: nil} = state) do
    timer = make_ref()
    Process.send_after(self(), {:poll, timer}, state.topology.config.polling_interval)
    %{state | timer: timer}
  end

  # -- Actions out -----------------------------------------------------------------------------

  defp perform(state, actions), do: Enum.reduce(actions, state, &perform_one/2)

  defp perform_one({kind, node}, state) when kind in [:connect, :disconnect],
    do: %{state | connector: Connector.start(state.connector, kind, node)}

  defp perform_one({:log, level, message}, state) do
    log(state, level, message)
    state
  end

  defp perform_one({:emit, event, measurements, metadata}, state) do
    emit(state, event, measurements, metadata)
    state
  end

  # libcluster's logs: the [libcluster:<topology>] prefix, and debug lines only with
  # `config :libcluster, debug: true`. A debug message may be a function, so that a poll builds
  # no text unless debug is on.
  defp log(state, :debug, message) do
    if Application.get_env(:libcluster, :debug, false) not in [nil, false, "false"] do
      text = if is_function(message, 0), do: message.(), else: message
      Logger.debug(prefix(state, text))
    end
  end

  defp log(state, :info, message), do: Logger.info(prefix(state, message))
  defp log(state, :warning, message), do: Logger.warning(prefix(state, message))

  defp prefix(state, message), do: "[libcluster:#{state.topology.name}] #{message}"

  defp telemetry_available? do
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
