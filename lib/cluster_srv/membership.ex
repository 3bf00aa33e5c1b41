defmodule ClusterSRV.Membership do
  @moduledoc """
  The strategy's membership rules, as data in and data out: given what it knows, a lookup's
  outcome or a job's, it returns what it knows next and the actions to take.

  It has no process, no clock and no I/O, so a test drives it with plain data;
  `ClusterSRV.Strategy` carries events in and performs the actions out. The events:

    * `lookup_done/3` - a lookup ended, with what the topology's `list_nodes` shows now;
    * `job_done/4` - a connect or disconnect job ended (see `ClusterSRV.Connector` for the
      outcomes).

  The actions, in the order they are to be taken:

    * `{:connect, node}`, `{:disconnect, node}` - start a job;
    * `{:log, level, message}` - `message` is a string, or for `:debug` a function that builds
      it, so that a poll builds no text unless debug is on;
    * `{:emit, event, measurements, metadata}` - a telemetry event (libcluster's).

  ## The contract

  These hold for every sequence of events (`test/cluster_srv/membership_test.exs` checks them
  over thousands of random ones):

    * **Failures change nothing.** A failed lookup, an empty answer or one with no valid name
      starts no job, and changes neither `meta` nor what is listed.
    * **Disconnects follow DNS.** A node is disconnected only when a successful answer with at
      least one valid name no longer lists it, it is in `meta`, and `list_nodes` shows it. Such
      a node is always disconnected at that answer, unless a connect of ours to it still runs:
      then the answer after that connect succeeds disconnects it.
    * **Connects follow DNS.** A node is connected only when the latest successful answer lists
      it and `list_nodes` does not show it.
    * **Never this node**, and **never two jobs for one node at once.**
    * **Retries are bounded.** A connect to a node whose last connect failed is a retry: at
      most `max_retries` run at once, the others wait in a queue. Every other job starts at
      once, so a new pod never waits behind dead ones. A queued retry whose node a newer answer
      no longer lists, or shows connected, is dropped; a node connected by others (its own
      strategy, OTP's `global`) is no longer counted as unreachable.
    * **`meta` keeps libcluster's meaning**: the nodes this strategy knows as members. A
      successful connect adds its node; a disconnect that succeeded, or that found the node
      already gone or not part of the network, removes it; a disconnect that failed otherwise
      keeps it, so that the next answer tries again. An answer keeps the listed nodes that
      were known or are connected, and the nodes it is disconnecting.
    * **Each problem is logged once while it lasts**: a failure when it starts and when its
      kind changes, its end once, a kind of rejected target when it appears, a node that
      stays unreachable once.

      iex> state = ClusterSRV.Membership.new(self: :"app@a.svc", query: "svc.")
      iex> answer = {:ok, %{nodes: [:"app@a.svc", :"app@b.svc"], rejected: []}}
      iex> {state, actions} = ClusterSRV.Membership.lookup_done(state, answer, [], 0)
      iex> for {:connect, node} <- actions, do: node
      [:"app@b.svc"]
      iex> {state, _} =
      ...>   ClusterSRV.Membership.job_done(state, :connect, :"app@b.svc", {:returned, true, 10})
      iex> state.meta
      MapSet.new([:"app@b.svc"])
  """

  alias ClusterSRV.Reasons

  @enforce_keys [:self, :query]
  defstruct [
    :self,
    :query,
    sources: [],
    per_source: %{},
    context: [],
    connect_log: :info,
    max_retries: 16,
    prune: true,
    prune_grace: 0,
    meta: MapSet.new(),
    listed: MapSet.new(),
    jobs: %{},
    retries: :queue.new(),
    unreachable: %{},
    missing: %{},
    failure: nil,
    failures: 0,
    rejections: MapSet.new(),
    self_listed: nil,
    was_listed: false,
    leaving: false,
    self_misses: 0,
    self_warned: nil,
    peers_leaving: %{}
  ]

  # How long a peer that said it is leaving is not connected again while DNS lists it: about a
  # pod's grace period for terminating (30 s by default in Kubernetes).
  @leaving_for 30_000

  # Successful, non-empty answers in a row without this node's name before it is checked.
  @self_check_after 3

  @typedoc """
  What the rules know:

    * `meta` - libcluster's meta, the nodes known as members;
    * `listed` - the nodes the latest successful answer listed;
    * `jobs` - per node, the job it has: `{:connect | :disconnect, :running | :queued}`, and
      whether it is a retry;
    * `retries` - the queue of retries waiting for room;
    * `unreachable` - listed nodes whose last connect failed, each with why;
    * `missing` - known nodes the answers stopped listing, each with when the first answer
      that missed it came (monotonic ms): their removal waits for `prune_grace`;
    * `failure`, `failures` - the ongoing lookup failure, and how many polls in a row failed
      (every source failed);
    * `sources`, `per_source` - each source's key (`{name, type}`), and what its latest
      successful answer listed, its ongoing failure and how many polls it failed in a row;
    * `rejections` - the kinds of rejected target the latest answers had, by source;
    * `self_listed` - whether the latest successful answer listed this node (`nil` before
      the first); `was_listed` - whether one ever did; `leaving` - it did, and the latest one
      no longer does: the pod is terminating, and starts no new connects;
    * `self_misses`, `self_warned` - successful answers in a row without this node, for the
      self-check, and the causes it has warned about (`nil` until it ran);
    * `peers_leaving` - peers that said they are leaving (their strategy stopping on a normal
      shutdown), each with when: not connected again while DNS still lists them, until DNS
      drops them, they connect again, or 30 s have passed.
  """
  @type t :: %__MODULE__{
          self: node(),
          query: String.t(),
          context: keyword(),
          max_retries: pos_integer(),
          meta: MapSet.t(node()),
          listed: MapSet.t(node()),
          jobs: %{node() => {:connect | :disconnect, :running | :queued, boolean()}},
          retries: :queue.queue(node()),
          unreachable: %{node() => term()},
          missing: %{node() => integer()},
          prune: boolean(),
          prune_grace: non_neg_integer(),
          failure: term(),
          failures: non_neg_integer(),
          rejections: MapSet.t({term(), atom()}),
          sources: [{String.t(), atom()}],
          per_source: %{{String.t(), atom()} => map()},
          self_listed: boolean() | nil,
          was_listed: boolean(),
          leaving: boolean(),
          self_misses: non_neg_integer(),
          self_warned: MapSet.t(atom()) | nil,
          peers_leaving: %{node() => integer()}
        }

  @type action ::
          {:connect, node()}
          | {:disconnect, node()}
          | :self_check
          | {:log, :debug | :info | :warning, String.t() | (() -> String.t())}
          | {:emit, [atom()], map(), map()}

  @type lookup_result ::
          {:ok, %{nodes: [node()], rejected: [{String.t(), atom()}]}} | {:error, term()}

  @doc """
  New rules. Options: `:self` (this node), `:query` (the name asked, for the logs) or
  `:sources` (several: each `%{name: name, type: :srv | :a | :aaaa}`), `:context`
  (`domain:` and `max_nodes:`, for the wording of rejections), `:meta` (libcluster's initial
  meta, a `MapSet`), `:max_retries` (default 16), `:prune` (default `true`), `:prune_grace`
  (ms, default 0) and `:connect_log` (the level of the line for each connect and disconnect
  that succeeded, or `false`; default `:info`).
  """
  @spec new(keyword()) :: t()
  def new(opts) do
    meta = Keyword.get(opts, :meta) || MapSet.new()

    sources =
      case Keyword.get(opts, :sources) do
        nil -> [{Keyword.fetch!(opts, :query), :srv}]
        sources -> for %{name: name, type: type} <- sources, do: {name, type}
      end

    opts = Keyword.put_new_lazy(opts, :query, fn -> elem(hd(sources), 0) end)
    per_source = Map.new(sources, &{&1, %{listed: MapSet.new(), failure: nil, failures: 0}})

    struct!(
      __MODULE__,
      Keyword.merge(opts, meta: meta, sources: sources, per_source: per_source)
    )
  end

  @doc """
  What a lookup's result counts as: `:ok`, or the failure it is. An answer with no valid name
  is a failure, `:no_valid_names`.

      iex> ClusterSRV.Membership.outcome({:ok, %{nodes: [], rejected: [{"a_b.svc", :invalid_hostname}]}})
      {:error, :no_valid_names}
  """
  @spec outcome(lookup_result() | [{term(), lookup_result()}]) :: :ok | {:error, term()}
  def outcome([{_source, _result} | _] = results) do
    outcomes = for {_source, result} <- results, do: outcome(result)
    if :ok in outcomes, do: :ok, else: hd(outcomes)
  end

  def outcome({:ok, %{nodes: []}}), do: {:error, :no_valid_names}
  def outcome({:ok, %{nodes: [_ | _]}}), do: :ok
  def outcome({:error, reason}), do: {:error, reason}

  @doc """
  A lookup ended at `now` (monotonic ms, the caller's clock), and `list_nodes` shows
  `connected`. `results` has a result per source, `[{{name, type}, result}]`; a single result
  stands for the only source's.

  With several sources, a source that fails keeps what it listed last: a node is disconnected
  only when every source that listed it has succeeded without it. A source that answers
  NXDOMAIN or "no records" while another source for the same name succeeds (a name with A
  records and no AAAA ones) is not warned about.
  """
  @spec lookup_done(
          t(),
          lookup_result() | [{{String.t(), atom()}, lookup_result()}],
          [node()],
          integer()
        ) ::
          {t(), [action()]}
  def lookup_done(state, {kind, _} = result, connected, now) when kind in [:ok, :error],
    do: lookup_done(state, [{hd(state.sources), result}], connected, now)

  def lookup_done(state, results, connected, now) when is_list(results) do
    {state, logged} = rejections(state, results)
    answered = for {{name, _type}, result} <- results, outcome(result) == :ok, do: name

    {state, per_source} =
      Enum.reduce(results, {state, []}, fn {source, result}, {state, logs} ->
        {state, more} = source_done(state, source, result, answered)
        {state, logs ++ more}
      end)

    {state, actions} =
      case answered do
        [] ->
          [{_source, result} | _] = results
          {:error, reason} = outcome(result)
          {%{state | failure: reason, failures: state.failures + 1}, []}

        _some ->
          {nodes, listed} = round_nodes(state, results)

          state = %{state | failure: nil, failures: 0}
          {state, listing} = self_listing(state, nodes)
          {state, changes} = apply_answer(state, nodes, listed, MapSet.new(connected), now)
          {state, listing ++ changes}
      end

    {state, logged ++ per_source ++ actions}
  end

  # The nodes of this round, as a list and as a set: those of its successful answers, in their
  # order, then those the sources that failed listed last (sorted), each once. One answer's
  # nodes are distinct already, and source_done/4 made their set: a round with one source that
  # answered needs neither again.
  defp round_nodes(state, [{source, {:ok, %{nodes: nodes}}}]),
    do: {nodes, state.per_source[source].listed}

  defp round_nodes(state, results) do
    kept =
      for {source, result} <- results,
          outcome(result) != :ok,
          node <- state.per_source[source].listed |> MapSet.to_list() |> Enum.sort(),
          do: node

    nodes = Enum.uniq(answered_nodes(results) ++ kept)
    {nodes, MapSet.new(nodes)}
  end

  defp answered_nodes(results) do
    for {_source, {:ok, %{nodes: nodes}}} <- results, node <- nodes, do: node
  end

  # One source's result: a success replaces what it lists and ends its failure; a failure keeps
  # what it listed, and is warned about when it starts or changes kind.
  defp source_done(state, source, result, answered) do
    known = state.per_source[source]

    case outcome(result) do
      :ok ->
        {:ok, %{nodes: nodes}} = result
        logs = if known.failure, do: [recovery(state, source, known)], else: []
        entry = %{listed: MapSet.new(nodes), failure: nil, failures: 0}
        {put_in(state.per_source[source], entry), logs}

      {:error, reason} ->
        {name, _type} = source
        benign? = reason in [:nxdomain, :no_records] and name in answered

        log =
          cond do
            benign? ->
              {:log, :debug, fn -> "#{label(source)}: #{Reasons.describe_failure(reason)}" end}

            known.failure == nil or Reasons.kind(known.failure) != Reasons.kind(reason) ->
              {:log, :warning,
               "lookup of #{label(source)} failed: #{Reasons.describe_failure(reason)}; " <>
                 "keeping the #{MapSet.size(state.meta)} known nodes until a lookup succeeds"}

            true ->
              {:log, :debug,
               fn ->
                 "lookup of #{label(source)} still failing: #{Reasons.describe_failure(reason)}"
               end}
          end

        entry = %{
          known
          | failure: if(benign?, do: known.failure, else: reason),
            failures: known.failures + 1
        }

        {put_in(state.per_source[source], entry), [log]}
    end
  end

  defp recovery(_state, source, known) do
    {:log, :info,
     "lookup of #{label(source)} succeeded again after #{known.failures} failed polls"}
  end

  # A source as the logs name it: its name, and its type unless SRV.
  defp label({name, :srv}), do: name
  defp label({name, type}), do: "#{name} (#{type |> Atom.to_string() |> String.upcase(:ascii)})"

  @doc """
  The strategy of `node` said at `now` that it is leaving (its node shuts down): it is not
  connected again while DNS still lists it, for at most 30 s.
  """
  @spec peer_leaving(t(), node(), integer()) :: {t(), [action()]}
  def peer_leaving(state, node, now) do
    {%{state | peers_leaving: Map.put(state.peers_leaving, node, now)},
     [
       {:log, :info,
        "#{inspect(node)} is leaving (its node is shutting down): not connecting it again " <>
          "while DNS still lists it"}
     ]}
  end

  @doc """
  A job of `kind` for `node` ended with `outcome`: `{:returned, value, duration}`,
  `{:crashed, reason}` or `:timed_out`.
  """
  @spec job_done(t(), :connect | :disconnect, node(), ClusterSRV.Connector.outcome()) ::
          {t(), [action()]}
  def job_done(state, kind, node, outcome) do
    state = %{state | jobs: Map.delete(state.jobs, node)}
    {state, actions} = settle(state, kind, node, outcome)
    {state, started} = dispatch(state)
    {state, actions ++ started}
  end

  # -- A successful answer ------------------------------------------------------------------------

  defp apply_answer(state, nodes, listed, connected, now) do
    me = state.self
    # A queued retry of a node now connected by others, or no longer listed, is pointless: it
    # is dropped, and holds back no disconnect below.
    {pointless, jobs} = Enum.split_with(state.jobs, &pointless_retry?(&1, listed, connected))
    pointless = MapSet.new(pointless, fn {node, _job} -> node end)
    retries = :queue.filter(&(not MapSet.member?(pointless, &1)), state.retries)
    state = %{state | jobs: Map.new(jobs), retries: retries}
    removed = MapSet.difference(state.meta, listed)

    # Known nodes DNS dropped that are connected and free: removed now, or kept while
    # prune_grace runs, or always with prune: false.
    dropped =
      for node <- removed,
          MapSet.member?(connected, node),
          node != me,
          not Map.has_key?(state.jobs, node),
          do: node

    {to_disconnect, kept, missing, removal_events} = removals(state, dropped, listed, now)

    # `nodes` holds each node once.
    to_connect =
      Enum.reject(
        nodes,
        &(&1 == me or MapSet.member?(connected, &1) or Map.has_key?(state.jobs, &1))
      )

    # A removed node whose disconnect still runs stays known until it ends: if it fails,
    # libcluster keeps the node for the next answer to try again.
    disconnecting = for node <- removed, match?({:disconnect, _, _}, state.jobs[node]), do: node

    # libcluster's meta: the listed nodes known or connected, those being disconnected, and
    # those whose removal waits.
    meta =
      listed
      |> MapSet.intersection(MapSet.union(state.meta, connected))
      |> MapSet.union(MapSet.new(to_disconnect ++ disconnecting ++ kept))
      |> MapSet.delete(me)

    # A leaving node (its pod terminating) starts no new connects, and a peer that said it is
    # leaving is not connected again while its mark holds.
    peers_leaving =
      Map.filter(state.peers_leaving, fn {node, since} ->
        MapSet.member?(listed, node) and not MapSet.member?(connected, node) and
          now - since < @leaving_for
      end)

    to_connect =
      if state.leaving,
        do: [],
        else: Enum.reject(to_connect, &Map.has_key?(peers_leaving, &1))

    # Connects to nodes not tried yet (or that last succeeded) and disconnects start at once;
    # connects to nodes whose last connect failed wait as retries.
    {retry, fresh} = Enum.split_with(to_connect, &Map.has_key?(state.unreachable, &1))

    jobs =
      state.jobs
      |> Map.merge(Map.new(to_disconnect, &{&1, {:disconnect, :running, false}}))
      |> Map.merge(Map.new(fresh, &{&1, {:connect, :running, false}}))
      |> Map.merge(Map.new(retry, &{&1, {:connect, :queued, true}}))

    state = %{
      state
      | meta: meta,
        listed: listed,
        # A node connected by others (its own strategy, OTP's global) is reachable, whatever
        # our last connect to it said.
        unreachable:
          Map.filter(state.unreachable, fn {node, _} ->
            MapSet.member?(listed, node) and not MapSet.member?(connected, node)
          end),
        missing: missing,
        peers_leaving: peers_leaving,
        jobs: jobs,
        retries: Enum.reduce(retry, state.retries, &:queue.in(&1, &2))
    }

    debug =
      {:log, :debug,
       fn ->
         "DNS lists #{MapSet.size(listed)} nodes; connecting #{length(to_connect)}, " <>
           "disconnecting #{length(to_disconnect)}"
       end}

    {state, started} = dispatch(state)

    {state,
     [debug] ++
       removal_events ++
       Enum.map(to_disconnect, &{:disconnect, &1}) ++
       Enum.map(fresh, &{:connect, &1}) ++ started}
  end

  # Which dropped nodes are disconnected now, and which are kept: with prune: false all of
  # them, with prune_grace those missing from the answers for less than it. A node listed
  # again is no longer missing; a node that is neither dropped nor missing is forgotten.
  defp removals(%{prune: false} = state, dropped, _listed, now) do
    {[], dropped, Map.new(dropped, &{&1, Map.get(state.missing, &1, now)}), []}
  end

  defp removals(state, dropped, _listed, now) do
    Enum.reduce(dropped, {[], [], %{}, []}, fn node, {now_, kept, missing, events} ->
      since = Map.get(state.missing, node, now)
      waited = now - since

      cond do
        waited >= state.prune_grace ->
          event = {:emit, [:cluster_srv, :removal, :done], %{missing_ms: waited}, %{node: node}}

          {[node | now_], kept, missing, events ++ [event]}

        Map.has_key?(state.missing, node) ->
          {now_, [node | kept], Map.put(missing, node, since), events}

        true ->
          due = since + state.prune_grace

          events =
            events ++
              [
                {:emit, [:cluster_srv, :removal, :deferred], %{grace_ms: state.prune_grace},
                 %{node: node, due: due}},
                {:log, :info,
                 "#{inspect(node)} is no longer listed; disconnecting it in " <>
                   "#{state.prune_grace} ms (prune_grace) unless DNS lists it again"}
              ]

          {now_, [node | kept], Map.put(missing, node, since), events}
      end
    end)
    |> then(fn {now_, kept, missing, events} ->
      {Enum.reverse(now_), Enum.reverse(kept), missing, events}
    end)
  end

  # Starts queued retries while fewer than max_retries run; drops those whose node the latest
  # answer no longer lists.
  defp dispatch(%{leaving: true} = state), do: {state, []}
  defp dispatch(state), do: dispatch(state, running_retries(state), [])

  defp dispatch(state, running, started) when running >= state.max_retries,
    do: {state, Enum.reverse(started)}

  defp dispatch(state, running, started) do
    case :queue.out(state.retries) do
      {:empty, _} ->
        {state, Enum.reverse(started)}

      {{:value, node}, rest} ->
        state = %{state | retries: rest}

        if MapSet.member?(state.listed, node) do
          state = put_in(state.jobs[node], {:connect, :running, true})
          dispatch(state, running + 1, [{:connect, node} | started])
        else
          dispatch(%{state | jobs: Map.delete(state.jobs, node)}, running, started)
        end
    end
  end

  defp pointless_retry?({node, {:connect, :queued, true}}, listed, connected),
    do: not MapSet.member?(listed, node) or MapSet.member?(connected, node)

  defp pointless_retry?(_job, _listed, _connected), do: false

  defp running_retries(state),
    do: Enum.count(state.jobs, &match?({_, {:connect, :running, true}}, &1))

  # -- Job outcomes ------------------------------------------------------------------------------

  defp settle(state, :connect, node, {:returned, true, duration}) do
    {%{
       state
       | meta: MapSet.put(state.meta, node),
         unreachable: Map.delete(state.unreachable, node)
     },
     [
       {:emit, [:libcluster, :connect_node, :ok], %{duration: duration}, %{node: node}}
     ] ++ connect_log(state, "connected to #{inspect(node)}")}
  end

  defp settle(state, :connect, node, outcome) do
    {reason, why} =
      case outcome do
        {:returned, false, _} -> {:unreachable, ""}
        {:returned, :ignored, _} -> {:not_part_of_network, ": not part of network"}
        odd -> {inspect(odd_reason(odd)), ": the connect MFA #{describe_odd(odd)}"}
      end

    # A node that stays unreachable is reported once, then at debug level until it connects.
    level = if Map.has_key?(state.unreachable, node), do: :debug, else: :warning

    {%{
       state
       | meta: MapSet.delete(state.meta, node),
         unreachable: Map.put(state.unreachable, node, unreachable_reason(outcome))
     },
     [
       {:emit, [:libcluster, :connect_node, :error], %{}, %{node: node, reason: reason}},
       {:log, level, "unable to connect to #{inspect(node)}#{why}"}
     ]}
  end

  defp settle(state, :disconnect, node, {:returned, true, duration}) do
    {%{state | meta: MapSet.delete(state.meta, node)},
     [
       {:emit, [:libcluster, :disconnect_node, :ok], %{duration: duration}, %{node: node}}
     ] ++ connect_log(state, "disconnected from #{inspect(node)}")}
  end

  defp settle(state, :disconnect, node, {:returned, value, _}) when value in [false, :ignored] do
    {reason, why} =
      if value == false,
        do: {:already_disconnected, "because we're already disconnected"},
        else: {:not_part_of_network, "because it is not part of the network"}

    {%{state | meta: MapSet.delete(state.meta, node)},
     [
       {:emit, [:libcluster, :disconnect_node, :error], %{}, %{node: node, reason: reason}},
       {:log, :warning, "disconnect from #{inspect(node)} failed #{why}"}
     ]}
  end

  # libcluster keeps a node it could not disconnect in meta, so the next answer tries again.
  defp settle(state, :disconnect, node, odd) do
    {state,
     [
       {:emit, [:libcluster, :disconnect_node, :error], %{},
        %{node: node, reason: inspect(odd_reason(odd))}},
       {:log, :warning,
        "disconnect from #{inspect(node)} failed: the disconnect MFA #{describe_odd(odd)}"}
     ]}
  end

  # The line for each connect and disconnect that succeeded, at the config's `log` level.
  defp connect_log(%{connect_log: false}, _message), do: []
  defp connect_log(%{connect_log: level}, message), do: [{:log, level, message}]

  # Why a node is unreachable, as status/1 shows it.
  defp unreachable_reason({:returned, false, _}), do: :unreachable
  defp unreachable_reason({:returned, :ignored, _}), do: :not_part_of_network
  defp unreachable_reason({:returned, value, _}), do: {:returned, value}
  defp unreachable_reason(:timed_out), do: :timeout
  defp unreachable_reason({:crashed, reason}), do: {:crashed, reason}

  defp odd_reason({:returned, value, _}), do: value
  defp odd_reason(:timed_out), do: :timeout
  defp odd_reason({:crashed, reason}), do: reason

  defp describe_odd({:returned, value, _}), do: "returned #{inspect(value)}"
  defp describe_odd(:timed_out), do: "did not return within connect_timeout and was stopped"
  defp describe_odd({:crashed, reason}), do: "crashed: #{inspect(reason)}"

  # -- This node's own name -----------------------------------------------------------------------

  # A pod whose name DNS listed and no longer lists is terminating: it starts no new connects.
  # A node whose name the answers never list is misnamed, or DNS is: after a few answers it is
  # checked (the :self_check action; see self_check_done/2).
  defp self_listing(state, nodes) do
    cond do
      state.self in nodes ->
        logs =
          if(state.leaving,
            do: [{:log, :info, "this node is listed again: connecting as before"}],
            else: []
          ) ++
            if state.self_warned != nil,
              do: [{:log, :info, "this node is listed now, as #{inspect(state.self)}"}],
              else: []

        {%{
           state
           | self_listed: true,
             was_listed: true,
             leaving: false,
             self_misses: 0,
             self_warned: nil
         }, logs}

      state.was_listed ->
        logs =
          if state.leaving,
            do: [],
            else: [
              {:log, :info,
               "this node (#{inspect(state.self)}) is no longer listed: its pod is leaving, so " <>
                 "it starts no new connects"}
            ]

        {%{state | self_listed: false, leaving: true}, logs}

      true ->
        misses = state.self_misses + 1
        check? = misses == @self_check_after and state.self != :nonode@nohost

        {%{state | self_listed: false, self_misses: misses},
         if(check?, do: [:self_check], else: [])}
    end
  end

  @doc """
  The self-check found `causes` for this node's name missing from the answers: each a map with
  `:cause` (an atom), `:message` and `:dialed` (what the others dial for this pod, or `nil`).
  Each cause is warned about once, until the node is listed.
  """
  @spec self_check_done(t(), [%{cause: atom(), message: String.t(), dialed: String.t() | nil}]) ::
          {t(), [action()]}
  def self_check_done(%{self_listed: true} = state, _causes), do: {state, []}

  def self_check_done(state, causes) do
    warned = state.self_warned || MapSet.new()

    actions =
      for %{cause: cause} = found <- causes, not MapSet.member?(warned, cause) do
        [
          {:log, :warning, found.message},
          {:emit, [:cluster_srv, :self_check], %{misses: state.self_misses},
           %{node: state.self, cause: cause, dialed: found.dialed}}
        ]
      end

    {%{state | self_warned: MapSet.union(warned, MapSet.new(causes, & &1.cause))},
     List.flatten(actions)}
  end

  @doc """
  What the rules know, for `ClusterSRV.status/1`: `listed`, `connecting`, `unreachable` (each
  node with why), `pending_removals` (each node with the monotonic time, in ms, from which the
  next successful answer that still misses it disconnects it), `self_listed`, `leaving` and
  `failures`.
  """
  @spec status(t()) :: map()
  def status(state) do
    %{
      listed: state.listed |> MapSet.to_list() |> Enum.sort(),
      connecting: for({node, {:connect, :running, _}} <- state.jobs, do: node) |> Enum.sort(),
      unreachable: state.unreachable,
      pending_removals:
        if(state.prune,
          do: Map.new(state.missing, fn {node, since} -> {node, since + state.prune_grace} end),
          else: %{}
        ),
      self_listed: state.self_listed,
      leaving: state.leaving,
      failures: state.failures
    }
  end

  # -- Failures and rejections, each logged once while it lasts -----------------------------------

  # Each kind of rejected target is warned about when it appears in an answer, and not again
  # while the answers that follow still have it; one that goes away and comes back is new.
  # Failed sources say nothing about their targets: what they had stays as it was.
  defp rejections(state, results) do
    {seen, logs} =
      Enum.reduce(results, {MapSet.new(), []}, fn
        {source, {:ok, %{rejected: rejected}}}, {seen, logs} ->
          by_reason =
            Enum.group_by(rejected, fn {_target, reason} -> reason end, fn {target, _} ->
              target
            end)

          new =
            for {reason, targets} <- Enum.sort(by_reason),
                not MapSet.member?(state.rejections, {source, reason}) do
              examples = targets |> Enum.take(3) |> Enum.map_join(", ", &inspect/1)

              {:log, :warning,
               "ignoring #{length(targets)} #{target_word(source)} of #{label(source)}: " <>
                 "#{Reasons.describe_rejection(reason, state.context)} (for example #{examples}); " <>
                 "this is logged again only if it stops and starts again"}
            end

          {MapSet.union(seen, MapSet.new(Map.keys(by_reason), &{source, &1})), logs ++ new}

        {source, {:error, _}}, {seen, logs} ->
          kept = for {^source, _reason} = entry <- state.rejections, do: entry
          {MapSet.union(seen, MapSet.new(kept)), logs}
      end)

    {%{state | rejections: seen}, logs}
  end

  defp target_word({_name, :srv}), do: "SRV target(s)"
  defp target_word(_source), do: "address(es)"
end
