defmodule ClusterSRV.Strategy do
  @default_polling_interval 5_000

  @moduledoc """
  A libcluster strategy that forms a cluster from the SRV records of a headless service.

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

  alias ClusterSRV.{Config, Record, Resolver}

  # Connects retried to nodes whose last connect failed run at most this many at a time, so
  # that many dead pods listed in DNS are retried steadily without a burst every poll. Every
  # other job starts at once: a new pod never waits behind dead ones.
  @max_retry_jobs 16

  # Added to the resolver's own deadline before a lookup is given up as lost.
  @lookup_margin 1_000

  defstruct [
    :topology,
    :connect,
    :disconnect,
    :list_nodes,
    :config,
    :resolver,
    :lookup,
    :timer,
    meta: MapSet.new(),
    listed: MapSet.new(),
    jobs: %{},
    busy: %{},
    retries: :queue.new(),
    failure: nil,
    failures: 0,
    unreachable: MapSet.new(),
    logged_rejections: MapSet.new(),
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
    result =
      case config.resolver do
        nil ->
          with {:ok, resolver} <- Resolver.new(config.resolver_options) do
            Resolver.lookup(resolver, config.query, fill_addresses: config.node_naming == :ip)
          end

        fun ->
          run_resolver_fun(fun, config)
      end

    with {:ok, records} <- result,
         {:ok, %{nodes: nodes, rejected: rejected}} <- node_names(records, config) do
      {:ok, %{query: config.query, records: records, nodes: nodes, rejected: rejected}}
    end
  end

  # -- Start ---------------------------------------------------------------------------------

  @doc false
  # Starts the loop from a state build!/1 validated. Shared with the standalone ClusterSRV.
  def start_built(%__MODULE__{} = built), do: GenServer.start_link(__MODULE__, built)

  @doc false
  # Validates libcluster's state into ours. Shared with the standalone ClusterSRV.
  def build!(%{topology: topology, config: config} = state) do
    {config, unknown} = Config.strategy!(config)

    %__MODULE__{
      topology: topology,
      connect: mfa!(state, :connect),
      disconnect: mfa!(state, :disconnect),
      list_nodes: mfa!(state, :list_nodes),
      config: {config, unknown},
      meta: meta!(Map.get(state, :meta)),
      resolver: resolver!(config)
    }
  end

  def build!(other) do
    raise ArgumentError,
          "expected a %Cluster.Strategy.State{} with :topology and :config, got: #{inspect(other)}"
  end

  defp mfa!(state, key) do
    {module, function, args} =
      case Map.get(state, key) do
        {m, f, a} = mfa when is_atom(m) and is_atom(f) and is_list(a) ->
          mfa

        other ->
          raise ArgumentError,
                "invalid #{inspect(key)} in the strategy state: expected {module, function, args}, " <>
                  "got: #{inspect(other)}"
      end

    arity = if key == :list_nodes, do: length(args), else: length(args) + 1

    unless Code.ensure_loaded?(module) and function_exported?(module, function, arity) do
      raise ArgumentError,
            "invalid #{inspect(key)} in the strategy state: " <>
              "#{inspect(module)}.#{function}/#{arity} is undefined"
    end

    {module, function, args}
  end

  defp meta!(nil), do: MapSet.new()
  defp meta!(%MapSet{} = meta), do: meta

  defp meta!(other) do
    raise ArgumentError,
          "invalid :meta in the strategy state: expected nil or a MapSet of nodes, got: #{inspect(other)}"
  end

  @impl true
  def init(%__MODULE__{config: {config, unknown}} = state) do
    state = %{state | config: config, telemetry?: telemetry_available?()}
    # Connect jobs and the user's resolver function run in linked processes, so that they end
    # with the strategy; trapping exits turns their ends into messages, which are ignored here
    # (their monitors report them).
    Process.flag(:trap_exit, true)

    for key <- unknown do
      warn(state, "unknown config key #{inspect(key)} is ignored (a typo?)")
    end

    {:ok, state, {:continue, :poll}}
  end

  # Built in the caller, so that a malformed nameserver fails the start there. With the user's
  # resolver function there is no native lookup, but the nameservers are still checked.
  defp resolver!(%Config{resolver: fun, resolver_options: options}) do
    if fun == nil or options[:nameservers] != [] do
      case Resolver.new(options) do
        {:ok, resolver} ->
          if fun == nil, do: resolver

        {:error, reason} ->
          raise ArgumentError, "cannot build the DNS resolver: #{inspect(reason)}"
      end
    end
  end

  # -- The polling loop ------------------------------------------------------------------------

  @impl true
  def handle_continue(:poll, state), do: {:noreply, start_lookup(state)}

  @impl true
  def handle_info({:poll, timer}, %{timer: timer} = state),
    do: {:noreply, start_lookup(%{state | timer: nil})}

  def handle_info({:cluster_srv_lookup, ref, result}, %{lookup: %{ref: ref} = lookup} = state) do
    {:noreply, finish_lookup(state, lookup, result)}
  end

  def handle_info({:lookup_deadline, ref}, %{lookup: %{ref: ref} = lookup} = state) do
    if lookup.pid, do: Process.exit(lookup.pid, :kill)
    {:noreply, finish_lookup(state, lookup, {:error, :timeout})}
  end

  def handle_info(
        {:DOWN, monitor, :process, _pid, reason},
        %{lookup: %{monitor: monitor}} = state
      ) do
    {:noreply, finish_lookup(state, state.lookup, {:error, {:resolver_crashed, reason}})}
  end

  def handle_info({:DOWN, monitor, :process, _pid, reason}, state)
      when is_map_key(state.jobs, monitor) do
    {job, jobs} = Map.pop(state.jobs, monitor)
    Process.cancel_timer(job.deadline)
    state = %{state | jobs: jobs, busy: Map.delete(state.busy, job.node)}
    reason = if job.timed_out?, do: :no_return, else: reason
    {:noreply, state |> job_done(job.kind, job.node, reason) |> dispatch()}
  end

  def handle_info({:job_deadline, monitor}, state) when is_map_key(state.jobs, monitor) do
    job = state.jobs[monitor]
    Process.exit(job.pid, :kill)
    {:noreply, put_in(state.jobs[monitor].timed_out?, true)}
  end

  # Late replies of lookups given up on, stale timers, the exits of linked helpers, and anything
  # else are dropped.
  def handle_info(_message, state), do: {:noreply, state}

  defp start_lookup(%{lookup: nil, config: config} = state) do
    started = System.monotonic_time()

    case state.resolver do
      nil ->
        parent = self()
        ref = make_ref()

        # The user's function may block as long as it likes: it runs in its own process, and
        # the deadline still ends the poll. Its answer arrives in the same shape as ours.
        {pid, monitor} =
          :erlang.spawn_opt(
            fn ->
              answer =
                with {:ok, records} <- run_resolver_fun(config.resolver, config),
                     {:ok, names} <- node_names(records, config) do
                  {:ok, Map.put(names, :records, length(records))}
                end

              send(parent, {:cluster_srv_lookup, ref, answer})
            end,
            [:link, :monitor]
          )

        deadline = resolver_fun_deadline(config)
        track_lookup(state, %{ref: ref, pid: pid, monitor: monitor, started: started}, deadline)

      resolver ->
        fill? = config.node_naming == :ip

        case Resolver.async_discover(resolver, config.query, naming_options(config)) do
          {:error, reason} ->
            finish_lookup(state, %{ref: nil, started: started, deadline: nil}, {:error, reason})

          ref ->
            deadline = Resolver.deadline(resolver, fill_addresses: fill?) + @lookup_margin
            track_lookup(state, %{ref: ref, pid: nil, monitor: nil, started: started}, deadline)
        end
    end
  end

  defp track_lookup(state, lookup, deadline) do
    timer = Process.send_after(self(), {:lookup_deadline, lookup.ref}, deadline)
    %{state | lookup: Map.put(lookup, :deadline, timer)}
  end

  defp resolver_fun_deadline(config) do
    opts = config.resolver_options
    fill = if config.node_naming == :ip, do: 2, else: 1
    fill * opts[:timeout] * opts[:attempts] + @lookup_margin
  end

  defp finish_lookup(state, lookup, result) do
    if lookup.deadline, do: Process.cancel_timer(lookup.deadline)
    if lookup[:monitor], do: Process.demonitor(lookup.monitor, [:flush])

    duration = System.monotonic_time() - lookup.started
    state = %{state | lookup: nil}

    state =
      case result do
        {:ok, %{records: records, nodes: nodes, rejected: rejected}} ->
          state = log_rejections(state, rejected)

          case nodes do
            [] ->
              emit_lookup(state, duration, records, 0, {:error, :no_valid_names})
              lookup_failed(state, :no_valid_names)

            nodes ->
              emit_lookup(state, duration, records, length(nodes), :ok)
              state |> lookup_recovered() |> apply_nodes(nodes)
          end

        {:error, reason} ->
          emit_lookup(state, duration, 0, 0, {:error, reason})
          lookup_failed(state, reason)
      end

    schedule_poll(state)
  end

  # Exactly one timer chain: a poll is scheduled only when a lookup has finished.
  # The timer's message carries its own reference, so no other message can start a poll.
  defp schedule_poll(%{timer: nil} = state) do
    timer = make_ref()
    Process.send_after(self(), {:poll, timer}, state.config.polling_interval)
    %{state | timer: timer}
  end

  defp node_names(records, config), do: Resolver.node_names(records, naming_options(config))

  defp naming_options(config) do
    [
      application_name: config.application_name,
      domain: config.domain,
      node_naming: config.node_naming,
      max_nodes: config.max_nodes
    ]
  end

  # -- The user's resolver function --------------------------------------------------------------

  # Runs `resolver` as libcluster does (the query as a charlist, :inet_res's hostent back) and
  # turns its answer into records. It runs outside the strategy process: a user's function may
  # block as long as it likes, and the deadline still ends the poll.
  defp run_resolver_fun(fun, config) do
    case fun.(String.to_charlist(config.query)) do
      {:ok, {:hostent, _name, _aliases, :srv, _count, entries}} when is_list(entries) ->
        # Sorted as the native resolver sorts, so that every pod takes the same max_nodes
        # names from an answer whose order rotates.
        records =
          entries
          |> Enum.flat_map(&srv_entry_to_record/1)
          |> Enum.sort_by(&{&1.priority, &1.target, &1.port, &1.weight})

        cond do
          records == [] -> {:error, :no_records}
          config.node_naming == :ip -> {:ok, fill_addresses_with_inet(records)}
          true -> {:ok, records}
        end

      {:error, reason} ->
        {:error, reason}

      other ->
        {:error, {:bad_resolver_result, other}}
    end
  rescue
    exception -> {:error, {:resolver_raised, Exception.message(exception)}}
  end

  defp srv_entry_to_record({priority, weight, port, target})
       when is_integer(priority) and is_integer(weight) and is_integer(port) and is_list(target) do
    [
      %Record{
        priority: priority,
        weight: weight,
        port: port,
        ttl: 0,
        target: :erlang.list_to_binary(target),
        addresses: []
      }
    ]
  rescue
    ArgumentError -> []
  end

  defp srv_entry_to_record(_malformed), do: []

  defp fill_addresses_with_inet(records) do
    records
    |> Task.async_stream(
      fn record ->
        host = String.to_charlist(record.target)

        addresses =
          case :inet.getaddrs(host, :inet) do
            {:ok, addresses} ->
              addresses

            {:error, _} ->
              case :inet.getaddrs(host, :inet6) do
                {:ok, addresses} -> addresses
                {:error, _} -> []
              end
          end

        %{record | addresses: addresses}
      end,
      max_concurrency: 16,
      ordered: true,
      # The poll's own deadline bounds the whole lookup.
      timeout: :infinity
    )
    |> Enum.map(fn {:ok, record} -> record end)
  end

  # -- Diff, connects and disconnects -----------------------------------------------------------

  # Called only with a successful answer holding at least one valid name.
  defp apply_nodes(state, nodes) do
    listed = MapSet.new(nodes)
    connected = MapSet.new(call(state.list_nodes, []))
    me = Node.self()

    removed = MapSet.difference(state.meta, listed)

    to_disconnect =
      removed
      |> MapSet.intersection(connected)
      |> Enum.reject(&(&1 == me or Map.has_key?(state.busy, &1)))

    to_connect =
      nodes
      |> Enum.reject(&(&1 == me or MapSet.member?(connected, &1) or Map.has_key?(state.busy, &1)))

    # A removed node whose disconnect is still running stays known until it ends: if
    # it fails, libcluster keeps the node for the next poll to try again.
    disconnecting =
      for node <- removed,
          match?({:disconnect, _}, state.busy[node]),
          into: MapSet.new(),
          do: node

    # libcluster's meta: the listed nodes we know or see connected, plus those being
    # disconnected. Connects add their node when they succeed.
    # (meta ∩ listed) ∪ (listed ∩ connected), computed as listed ∩ (meta ∪ connected).
    meta =
      listed
      |> MapSet.intersection(MapSet.union(state.meta, connected))
      |> MapSet.union(MapSet.new(to_disconnect))
      |> MapSet.union(disconnecting)
      |> MapSet.delete(me)

    debug(state, fn ->
      "DNS lists #{length(nodes)} nodes; connecting #{length(to_connect)}, " <>
        "disconnecting #{length(to_disconnect)}"
    end)

    # Disconnects and connects to nodes never tried (or that last succeeded) start at once,
    # however many: none of them can wait behind a dead pod. Connects to nodes whose last
    # connect failed wait in a queue, at most @max_retry_jobs running at a time.
    {retry, fresh} = Enum.split_with(to_connect, &MapSet.member?(state.unreachable, &1))

    state = %{
      state
      | meta: meta,
        listed: listed,
        unreachable: MapSet.intersection(state.unreachable, listed),
        retries: Enum.reduce(retry, state.retries, &:queue.in(&1, &2)),
        busy: Map.merge(state.busy, Map.new(retry, &{&1, {:connect, :queued}}))
    }

    state = Enum.reduce(to_disconnect, state, &start_job(&2, :disconnect, &1, false))

    fresh
    |> Enum.reduce(state, &start_job(&2, :connect, &1, false))
    |> dispatch()
  end

  # Starts queued retries while fewer than @max_retry_jobs of them run. A retry queued before
  # the latest answer may no longer be wanted (DNS dropped its node): it is skipped.
  defp dispatch(state) do
    running_retries = Enum.count(state.jobs, fn {_, job} -> job.retry? end)

    case running_retries < @max_retry_jobs and :queue.out(state.retries) do
      {{:value, node}, rest} ->
        state = %{state | retries: rest}

        if wanted?(state, :connect, node) do
          state |> start_job(:connect, node, true) |> dispatch()
        else
          dispatch(%{state | busy: Map.delete(state.busy, node)})
        end

      _none ->
        state
    end
  end

  defp wanted?(state, :connect, node), do: MapSet.member?(state.listed, node)

  # Each job runs in its own linked process and reports through its exit reason, so a job that
  # raises is reported the same way, and a job that never returns is killed at its deadline.
  defp start_job(state, kind, node, retry?) do
    {m, f, args} = if kind == :connect, do: state.connect, else: state.disconnect

    {pid, monitor} =
      :erlang.spawn_opt(
        fn ->
          started = System.monotonic_time()
          result = apply(m, f, args ++ [node])
          exit({:cluster_srv_job, result, System.monotonic_time() - started})
        end,
        [:link, :monitor]
      )

    # A job whose MFA has not returned by then is killed and counted as a failure.
    deadline = Process.send_after(self(), {:job_deadline, monitor}, state.config.connect_timeout)

    job = %{
      kind: kind,
      node: node,
      pid: pid,
      deadline: deadline,
      retry?: retry?,
      timed_out?: false
    }

    %{
      state
      | jobs: Map.put(state.jobs, monitor, job),
        busy: Map.put(state.busy, node, {kind, monitor})
    }
  end

  defp job_done(state, :connect, node, {:cluster_srv_job, true, duration}) do
    emit(state, [:libcluster, :connect_node, :ok], %{duration: duration}, %{node: node})
    info(state, "connected to #{inspect(node)}")

    %{
      state
      | meta: MapSet.put(state.meta, node),
        unreachable: MapSet.delete(state.unreachable, node)
    }
  end

  defp job_done(state, :connect, node, {:cluster_srv_job, false, _duration}) do
    emit(state, [:libcluster, :connect_node, :error], %{}, %{node: node, reason: :unreachable})
    connect_failed(state, node, "unable to connect to #{inspect(node)}")
  end

  defp job_done(state, :connect, node, {:cluster_srv_job, :ignored, _duration}) do
    emit(state, [:libcluster, :connect_node, :error], %{}, %{
      node: node,
      reason: :not_part_of_network
    })

    connect_failed(state, node, "unable to connect to #{inspect(node)}: not part of network")
  end

  defp job_done(state, :connect, node, outcome) do
    {what, reason} = odd_outcome(outcome)
    emit(state, [:libcluster, :connect_node, :error], %{}, %{node: node, reason: inspect(reason)})
    connect_failed(state, node, "unable to connect to #{inspect(node)}: the connect MFA #{what}")
  end

  defp job_done(state, :disconnect, node, {:cluster_srv_job, true, duration}) do
    emit(state, [:libcluster, :disconnect_node, :ok], %{duration: duration}, %{node: node})
    info(state, "disconnected from #{inspect(node)}")
    %{state | meta: MapSet.delete(state.meta, node)}
  end

  defp job_done(state, :disconnect, node, {:cluster_srv_job, false, _duration}) do
    emit(state, [:libcluster, :disconnect_node, :error], %{}, %{
      node: node,
      reason: :already_disconnected
    })

    warn(state, "disconnect from #{inspect(node)} failed because we're already disconnected")
    %{state | meta: MapSet.delete(state.meta, node)}
  end

  defp job_done(state, :disconnect, node, {:cluster_srv_job, :ignored, _duration}) do
    emit(state, [:libcluster, :disconnect_node, :error], %{}, %{
      node: node,
      reason: :not_part_of_network
    })

    warn(state, "disconnect from #{inspect(node)} failed because it is not part of the network")
    %{state | meta: MapSet.delete(state.meta, node)}
  end

  # libcluster keeps a node it could not disconnect in meta, so the next poll tries again.
  defp job_done(state, :disconnect, node, outcome) do
    {what, reason} = odd_outcome(outcome)

    emit(state, [:libcluster, :disconnect_node, :error], %{}, %{
      node: node,
      reason: inspect(reason)
    })

    warn(state, "disconnect from #{inspect(node)} failed: the disconnect MFA #{what}")
    state
  end

  defp odd_outcome({:cluster_srv_job, result, _duration}),
    do: {"returned #{inspect(result)}", result}

  defp odd_outcome(:no_return),
    do: {"did not return within connect_timeout and was stopped", :timeout}

  defp odd_outcome(crash), do: {"crashed: #{inspect(crash)}", crash}

  # A node that stays unreachable is reported once, then at debug level until it connects.
  defp connect_failed(state, node, message) do
    if MapSet.member?(state.unreachable, node),
      do: debug(state, message),
      else: warn(state, message)

    %{
      state
      | meta: MapSet.delete(state.meta, node),
        unreachable: MapSet.put(state.unreachable, node)
    }
  end

  # -- Failures and rejections, each logged once ---------------------------------------------

  # A failure is warned about when it starts, and again whenever its kind changes (SERVFAIL,
  # then a timeout, then an io error are three warnings); the polls that fail again the same
  # way are logged at debug level only.
  defp lookup_failed(state, reason) do
    if state.failure == nil or failure_kind(state.failure) != failure_kind(reason) do
      warn(
        state,
        "lookup of #{state.config.query} failed: #{describe_failure(reason)}; " <>
          "keeping the #{MapSet.size(state.meta)} known nodes until a lookup succeeds"
      )
    else
      debug(state, fn ->
        "lookup of #{state.config.query} still failing: #{describe_failure(reason)}"
      end)
    end

    %{state | failure: reason, failures: state.failures + 1}
  end

  # The kind of a failure: its reason without the details, so that a decoding error whose text
  # changes from poll to poll is one failure.
  defp failure_kind(reason) when is_tuple(reason) and tuple_size(reason) > 0, do: elem(reason, 0)
  defp failure_kind(reason), do: reason

  defp lookup_recovered(%{failure: nil} = state), do: state

  defp lookup_recovered(state) do
    info(
      state,
      "lookup of #{state.config.query} succeeded again after #{state.failures} failed polls"
    )

    %{state | failure: nil, failures: 0}
  end

  @doc false
  # Also used by mix cluster_srv.check, so that both say the same.
  def describe_failure(:nxdomain), do: "the name does not exist (NXDOMAIN)"
  def describe_failure(:no_records), do: "the name has no SRV records"
  def describe_failure(:timeout), do: "no answer in time"
  def describe_failure(:servfail), do: "the server answered SERVFAIL"
  def describe_failure(:refused), do: "the server refused the query"
  def describe_failure(:no_valid_names), do: "the answer held no valid node name"
  def describe_failure({:io, message}) when is_binary(message), do: message
  def describe_failure({:invalid_name, name}), do: "not a valid DNS name: #{inspect(name)}"
  def describe_failure(other), do: inspect(other)

  # Each kind of rejected target is warned about when it appears in an answer, and not again
  # while the answers that follow still have it; one that goes away and comes back is new.
  defp log_rejections(state, rejected) do
    by_reason =
      Enum.group_by(rejected, fn {_target, reason} -> reason end, fn {target, _} -> target end)

    for {reason, targets} <- by_reason,
        not MapSet.member?(state.logged_rejections, reason) do
      examples = targets |> Enum.take(3) |> Enum.map_join(", ", &inspect/1)

      warn(
        state,
        "ignoring #{length(targets)} SRV target(s) of #{state.config.query}: " <>
          "#{describe_rejection(reason, state.config)} (for example #{examples}); " <>
          "this is logged again only if it stops and starts again"
      )
    end

    %{state | logged_rejections: by_reason |> Map.keys() |> MapSet.new()}
  end

  @doc false
  def describe_rejection(:invalid_hostname, _),
    do: "not a valid host name (letters, digits and hyphens; labels of 1 to 63 octets)"

  def describe_rejection(:too_long, _), do: "the host or node name is too long"

  def describe_rejection(:outside_domain, config),
    do: "not under the service's domain #{config.domain}"

  def describe_rejection(:service_itself, _),
    do: "the target is the service itself: is the service headless (clusterIP: None)?"

  def describe_rejection(:no_service, _), do: "the root target \".\" means no service"
  def describe_rejection(:no_address, _), do: "no address for node_naming: :ip"

  def describe_rejection(:over_max_nodes, config),
    do: "more than max_nodes (#{config.max_nodes}) names in one answer"

  def describe_rejection(other, _), do: inspect(other)

  # -- libcluster's logs and telemetry -----------------------------------------------------------

  defp call({m, f, args}, extra), do: apply(m, f, args ++ extra)

  # The message may be a function, so that a poll builds no text unless debug is on.
  defp debug(state, message) do
    if Application.get_env(:libcluster, :debug, false) not in [nil, false, "false"] do
      text = if is_function(message, 0), do: message.(), else: message
      Logger.debug(prefix(state, text))
    end
  end

  defp info(state, message), do: Logger.info(prefix(state, message))
  defp warn(state, message), do: Logger.warning(prefix(state, message))

  defp prefix(state, message), do: "[libcluster:#{state.topology}] #{message}"

  defp telemetry_available? do
    Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
  end

  defp emit(%{telemetry?: false}, _event, _measurements, _metadata), do: :ok

  defp emit(state, event, measurements, metadata) do
    # :telemetry is libcluster's dependency, not ours: call it without a compile-time reference.
    apply(:telemetry, :execute, [
      event,
      measurements,
      Map.put(metadata, :topology, state.topology)
    ])
  end

  defp emit_lookup(state, duration, records, nodes, result) do
    emit(state, [:cluster_srv, :lookup], %{duration: duration, records: records, nodes: nodes}, %{
      query: state.config.query,
      result: result
    })
  end
end
