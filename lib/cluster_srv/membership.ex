defmodule ClusterSRV.Membership do
  @moduledoc false
  # The strategy's membership rules, as data in and data out: given what it knows, a lookup's
  # outcome or a job's, it returns what it knows next and the actions to take.
  #
  # It has no process, no clock and no I/O, so a test drives it with plain data;
  # `ClusterSRV.Strategy` carries events in and performs the actions out. The events:
  #
  #   * `lookup_done/4` - a poll's lookups ended, with what the topology's `list_nodes` shows
  #     now and the time (the caller's monotonic clock, in ms);
  #   * `job_done/4` - a connect or disconnect job ended (see `ClusterSRV.Connector` for the
  #     outcomes);
  #   * `peer_leaving/3` - a peer's strategy said its node is shutting down;
  #   * `self_check_done/2` - the self-check ended.
  #
  # The actions, in the order they are to be taken:
  #
  #   * `{:connect, node}`, `{:disconnect, node}` - start a job;
  #   * `:self_check` - look up once more and say why this node's name is missing;
  #   * `{:log, level, message}` - `message` is a string, or for `:debug` a function that builds
  #     it, so that a poll builds no text unless debug is on;
  #   * `{:emit, event, measurements, metadata}` - a telemetry event (libcluster's).
  #
  # ## What a poll's answers count as
  #
  # A poll asks each source (a name and a record type) once. Each source's result is:
  #
  #   * **listed** - a successful answer with valid node names: the source now lists exactly
  #     those;
  #   * **empty** - a successful answer that lists no one: "no records", an answer whose targets
  #     are all invalid, or NXDOMAIN when no other type of the same name answered. The source
  #     now lists no one. An NXDOMAIN for one type of a name whose other types answered in the
  #     same poll contradicts them (a name that does not exist has no records of any type), so
  #     it counts as a failure instead;
  #   * **partial** - a successful answer some of whose targets could not be resolved to an
  #     address (`:unresolved`, with `node_naming: :ip`): the source lists the nodes it named, and
  #     keeps the node each unresolved target had (`:by_target` of the answers before), since DNS
  #     still lists that target. It is warned about as a failure, but needs no time limit: a
  #     target DNS no longer lists is gone at once;
  #   * **failed** - a timeout, SERVFAIL, REFUSED, an answer too large for one DNS message, or
  #     any other error: the source keeps what it listed.
  #
  # A failed source keeps its last list for `source_grace` ms at most while other sources answer
  # (the strategy sets it to the longer of `prune_grace` and 10 polling intervals); then it
  # lists no one. A poll in
  # which no source names a valid node (every source failed, or says no one is there) changes
  # nothing at all, and restarts that clock: a whole DNS outage never removes anyone.
  #
  # ## The contract
  #
  # These hold for every sequence of events (`test/cluster_srv/membership_test.exs` checks them
  # over thousands of random ones):
  #
  #   * **Failures change nothing.** A poll in which no source names a valid node starts no job,
  #     and changes neither `meta` nor what is listed.
  #   * **Disconnects follow DNS.** A node is disconnected only when no source lists it any more
  #     (by the rules above), it is in `meta` or the previous answer listed it, and `list_nodes`
  #     shows it. Such a node is always disconnected at that poll, unless a connect of ours to it
  #     still runs: then the poll after that connect ends disconnects it.
  #   * **Connects follow DNS.** A node is connected only when a source lists it and `list_nodes`
  #     does not show it.
  #   * **Never this node**, and **never two jobs for one node at once.**
  #   * **Retries are bounded.** A connect to a node whose last connect failed is a retry: at
  #     most `max_retries` run at once, the others wait in a queue. Every other job starts at
  #     once, so a new pod never waits behind dead ones. A queued retry whose node a newer answer
  #     no longer lists, or shows connected, is dropped; a node connected by others (its own
  #     strategy, OTP's `global`) is no longer counted as unreachable.
  #   * **`meta` keeps libcluster's meaning**: the nodes this strategy knows as members. A
  #     successful connect adds its node; a disconnect that succeeded, or that found the node
  #     already gone or not part of the network, removes it; a disconnect that failed otherwise
  #     keeps it, so that the next answer tries again. An answer keeps the listed nodes that
  #     were known or are connected, and the nodes it is disconnecting.
  #   * **Each problem is logged once while it lasts**: a source's failure when it starts and when
  #     its kind changes, its end once, a kind of rejected target when it appears, a node that
  #     stays unreachable once.
  #
  #     iex> state = ClusterSRV.Membership.new(self: :"app@a.svc", query: "svc.")
  #     iex> answer = {:ok, %{nodes: [:"app@a.svc", :"app@b.svc"], rejected: []}}
  #     iex> {state, actions} = ClusterSRV.Membership.lookup_done(state, answer, [], 0)
  #     iex> for {:connect, node} <- actions, do: node
  #     [:"app@b.svc"]
  #     iex> {state, _} =
  #     ...>   ClusterSRV.Membership.job_done(state, :connect, :"app@b.svc", {:returned, true, 10})
  #     iex> state.meta
  #     MapSet.new([:"app@b.svc"])

  alias ClusterSRV.Reasons

  @enforce_keys [:self]
  defstruct [
    :self,
    sources: [],
    per_source: %{},
    context: [],
    connect_log: :info,
    max_retries: 16,
    prune: true,
    prune_grace: 0,
    source_grace: 50_000,
    meta: MapSet.new(),
    listed: MapSet.new(),
    jobs: %{},
    retries: :queue.new(),
    unreachable: %{},
    missing: %{},
    rejections: MapSet.new(),
    self_listed: nil,
    was_listed: false,
    self_misses: 0,
    peers_leaving: %{}
  ]

  # How long a peer that said it is leaving is not connected again while DNS lists it: about a
  # pod's grace period for terminating (30 s by default in Kubernetes).
  @leaving_for 30_000

  # Successful, non-empty answers in a row without this node's name before it is checked.
  @self_check_after 3

  # A source nobody has heard from yet, or that answers.
  @fresh %{listed: MapSet.new(), targets: %{}, failure: nil, failures: 0, since: nil}

  @typedoc """
  What the rules know:

    * `meta` - libcluster's meta, the nodes known as members;
    * `listed` - the nodes the sources list, after the latest poll that named anyone;
    * `jobs` - per node, the job it has: `{:connect | :disconnect, :running | :queued}`, and
      whether it is a retry;
    * `retries` - the queue of retries waiting for room;
    * `unreachable` - listed nodes whose last connect failed, each with why;
    * `missing` - known nodes the answers stopped listing, each with when the first answer
      that missed it came (monotonic ms): their removal waits for `prune_grace`;
    * `sources`, `per_source` - each source's key (`{name, type}`), and what it lists (with
      `node_naming: :ip`, also each SRV target's node), its ongoing failure, how many polls in a
      row it failed, and since when (monotonic ms) it has failed while others answered (`nil`
      when it answers);
    * `rejections` - the kinds of rejected target the latest answers had, by source;
    * `self_listed` - whether the latest poll that named anyone listed this node (`nil` before
      the first); `was_listed` - whether one ever did. A node that was listed and no longer is
      is leaving: its pod is terminating, and it starts no new connects;
    * `self_misses` - such polls in a row without this node, for the self-check;
    * `peers_leaving` - peers that said they are leaving (their strategy stopping on a normal
      shutdown of their node), each with when, and whether it has been seen disconnected since:
      not connected again while DNS still lists it, until DNS drops it, it was seen gone and
      then connected again (it came back on its own), or 30 s have passed.
  """
  @type source :: {String.t(), :srv | :a | :aaaa}

  @type t :: %__MODULE__{
          self: node(),
          sources: [source()],
          per_source: %{
            source() => %{
              listed: MapSet.t(node()),
              targets: %{String.t() => node()},
              failure: term(),
              failures: non_neg_integer(),
              since: integer() | nil
            }
          },
          context: keyword(),
          connect_log: Logger.level() | false,
          max_retries: pos_integer(),
          prune: boolean(),
          prune_grace: non_neg_integer(),
          source_grace: non_neg_integer(),
          meta: MapSet.t(node()),
          listed: MapSet.t(node()),
          jobs: %{node() => {:connect | :disconnect, :running | :queued, boolean()}},
          retries: :queue.queue(node()),
          unreachable: %{node() => term()},
          missing: %{node() => integer()},
          rejections: MapSet.t({source(), atom()}),
          self_listed: boolean() | nil,
          was_listed: boolean(),
          self_misses: non_neg_integer(),
          peers_leaving: %{node() => {integer(), boolean()}}
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
  New rules. Options: `:self` (this node), `:query` (the one name asked, for SRV records) or
  `:sources` (several: each `%{name: name, type: :srv | :a | :aaaa}`), `:context`
  (`domain:` and `max_nodes:`, for the wording of rejections), `:meta` (libcluster's initial
  meta, a `MapSet`), `:max_retries` (default 16), `:prune` (default `true`), `:prune_grace`
  (ms, default 0), `:source_grace` (ms a failing source keeps its list while others answer,
  default 50_000) and `:connect_log` (the level of the line for each connect and disconnect
  that succeeded, or `false`; default `:info`).
  """
  @spec new(keyword()) :: t()
  def new(opts) do
    sources =
      case Keyword.fetch(opts, :sources) do
        {:ok, sources} -> for %{name: name, type: type} <- sources, do: {name, type}
        :error -> [{Keyword.fetch!(opts, :query), :srv}]
      end

    fields =
      opts
      |> Keyword.drop([:query, :sources, :meta])
      |> Keyword.merge(
        sources: sources,
        per_source: Map.new(sources, &{&1, @fresh}),
        meta: Keyword.get(opts, :meta) || MapSet.new()
      )

    struct!(__MODULE__, fields)
  end

  @doc """
  What a poll's results count as: `:ok` when a source named at least one valid node, or the
  failure it is (the first source's). An answer with no valid name is `:no_valid_names`.

      iex> ClusterSRV.Membership.outcome({:ok, %{nodes: [], rejected: [{"a_b.svc", :invalid_hostname}]}})
      {:error, :no_valid_names}
  """
  @spec outcome(lookup_result() | [{source(), lookup_result()}]) :: :ok | {:error, term()}
  def outcome([{_source, _result} | _] = results), do: round_outcome(classify(results, %{}))
  def outcome(result), do: round_outcome([{nil, class(result, false, %{})}])

  defp round_outcome(classes) do
    if names_anyone?(classes) do
      :ok
    else
      [{_source, class} | _] = classes
      {:error, reason(class)}
    end
  end

  defp names_anyone?(classes) do
    Enum.any?(classes, fn
      {_source, {:listed, [_ | _], _targets}} -> true
      {_source, {:partial, [_ | _], _targets, _reason}} -> true
      _other -> false
    end)
  end

  defp reason({:empty, reason}), do: reason
  defp reason({:failed, reason}), do: reason
  defp reason({:partial, _nodes, _targets, reason}), do: reason

  # Each source's result as the rules count it (see the moduledoc): {:listed, nodes, targets},
  # {:empty, why}, {:partial, nodes, targets, why} or {:failed, why}, where `targets` maps
  # each SRV target to its node (with node_naming: :ip) and a partial answer's nodes include
  # those its unresolved targets had, as `per_source` knows them.
  defp classify(results, per_source) do
    answered =
      for {{name, _type}, result} <- results, answered?(result), into: MapSet.new(), do: name

    for {{name, _type} = source, result} <- results do
      known = Map.get(per_source, source, @fresh)
      {source, class(result, MapSet.member?(answered, name), known.targets)}
    end
  end

  # Whether the server said the name exists (NOERROR), whatever it held.
  defp answered?({:ok, _answer}), do: true
  defp answered?({:error, :no_records}), do: true
  defp answered?(_failed), do: false

  defp class({:ok, %{nodes: nodes} = answer}, _name_answered?, known_targets) do
    targets = answer |> Map.get(:by_target, []) |> Map.new()

    case Map.get(answer, :unresolved, []) do
      [] when nodes == [] ->
        {:empty, :no_valid_names}

      [] ->
        {:listed, nodes, targets}

      unresolved ->
        kept =
          for {target, _why} <- unresolved,
              Map.has_key?(known_targets, target),
              do: {target, Map.fetch!(known_targets, target)}

        nodes = Enum.uniq(nodes ++ for({_target, node} <- kept, do: node))
        {:partial, nodes, Map.merge(targets, Map.new(kept)), {:unresolved, unresolved}}
    end
  end

  defp class({:error, :no_records}, _name_answered?, _known), do: {:empty, :no_records}
  defp class({:error, :nxdomain}, false, _known), do: {:empty, :nxdomain}
  defp class({:error, reason}, _name_answered?, _known), do: {:failed, reason}

  @doc """
  A poll ended at `now` (monotonic ms, the caller's clock), and `list_nodes` shows
  `connected`. `results` has a result per source, `[{{name, type}, result}]`; a single result
  stands for the only source's. How each result counts is in the moduledoc.
  """
  @spec lookup_done(t(), lookup_result() | [{source(), lookup_result()}], [node()], integer()) ::
          {t(), [action()]}
  def lookup_done(state, {kind, _} = result, connected, now) when kind in [:ok, :error],
    do: lookup_done(state, [{hd(state.sources), result}], connected, now)

  def lookup_done(state, results, connected, now) when is_list(results) do
    {state, rejected} = rejections(state, results)
    classes = classify(results, state.per_source)

    if names_anyone?(classes) do
      {state, logs} = reduce_sources(classes, state, &source_answered(&1, &2, &3, now))
      {nodes, listed} = round_nodes(state, classes)
      {state, listing} = self_listing(state, listed)
      {state, changes} = apply_answer(state, nodes, listed, MapSet.new(connected), now)
      {state, rejected ++ logs ++ listing ++ changes}
    else
      {state, logs} = reduce_sources(classes, state, &source_down/3)
      {state, rejected ++ logs}
    end
  end

  defp reduce_sources(classes, state, fun) do
    Enum.reduce(classes, {state, []}, fn {source, class}, {state, logs} ->
      {state, more} = fun.(state, source, class)
      {state, logs ++ more}
    end)
  end

  # A poll in which no source named anyone: each source counts a failed poll, keeps what it
  # listed, and the clock of its failure while others answer starts over.
  defp source_down(state, source, class) do
    known = state.per_source[source]
    reason = reason(class)

    log =
      failure_log(known, source, reason, fn ->
        "keeping the #{MapSet.size(state.meta)} known nodes until a lookup succeeds"
      end)

    entry = %{known | failure: reason, failures: known.failures + 1, since: nil}
    {put_in(state.per_source[source], entry), [log]}
  end

  # A poll in which some source named someone: each source's result counts as the moduledoc
  # says.
  defp source_answered(state, source, {:listed, nodes, targets}, _now),
    do: source_lists(state, source, MapSet.new(nodes), targets, [])

  defp source_answered(state, source, {:empty, reason}, _now) do
    debug = {:log, :debug, fn -> "#{label(source)}: #{Reasons.describe_failure(reason)}" end}
    source_lists(state, source, MapSet.new(), %{}, [debug])
  end

  defp source_answered(state, source, {:failed, reason}, now),
    do: source_failing(state, source, reason, now)

  # A partial answer lists what it named and what its unresolved targets had, and counts as a
  # failure for the logs and the status, but its list needs no time limit: DNS still lists
  # every target whose node it keeps.
  defp source_answered(state, source, {:partial, nodes, targets, reason}, _now) do
    known = state.per_source[source]

    log =
      failure_log(known, source, reason, fn ->
        "keeping the nodes those targets had"
      end)

    entry = %{
      @fresh
      | listed: MapSet.new(nodes),
        targets: targets,
        failure: reason,
        failures: known.failures + 1
    }

    {put_in(state.per_source[source], entry), [log]}
  end

  defp source_lists(state, source, listed, targets, logs) do
    known = state.per_source[source]

    logs =
      if known.failure,
        do: [
          {:log, :info,
           "lookup of #{label(source)} succeeded again after #{known.failures} failed polls"}
          | logs
        ],
        else: logs

    {put_in(state.per_source[source], %{@fresh | listed: listed, targets: targets}), logs}
  end

  # A failed source while others answer: it keeps what it listed for source_grace at most,
  # then lists no one.
  defp source_failing(state, source, reason, now) do
    known = state.per_source[source]
    since = known.since || now
    expired? = now - since >= state.source_grace
    listed = if expired?, do: MapSet.new(), else: known.listed

    dropped = MapSet.size(MapSet.difference(known.listed, listed))

    expired =
      if dropped > 0,
        do: [
          {:log, :warning,
           "lookup of #{label(source)} has failed for #{now - since} ms while the other " <>
             "queries answer: it no longer keeps #{dropped} node(s) it listed before"}
        ],
        else: []

    log =
      failure_log(known, source, reason, fn ->
        "keeping the #{MapSet.size(known.listed)} nodes it listed for up to " <>
          "#{state.source_grace} ms while the other queries answer"
      end)

    entry = %{
      known
      | listed: listed,
        targets: if(expired?, do: %{}, else: known.targets),
        failure: reason,
        failures: known.failures + 1,
        since: since
    }

    {put_in(state.per_source[source], entry), [log | expired]}
  end

  # A failure is warned about when it starts and when its kind changes, else logged at debug.
  defp failure_log(known, source, reason, keeping) do
    if known.failure == nil or Reasons.kind(known.failure) != Reasons.kind(reason) do
      {:log, :warning,
       "lookup of #{label(source)} failed: #{Reasons.describe_failure(reason)}; #{keeping.()}"}
    else
      {:log, :debug,
       fn -> "lookup of #{label(source)} still failing: #{Reasons.describe_failure(reason)}" end}
    end
  end

  # The nodes of this poll, as a list and as a set: those its answers named, in their order,
  # then those the failing sources keep (sorted), each once. One answer's nodes are distinct
  # already, and source_lists/4 made their set: a poll with one source that listed needs
  # neither again.
  defp round_nodes(state, [{source, {:listed, nodes, _targets}}]),
    do: {nodes, state.per_source[source].listed}

  defp round_nodes(state, classes) do
    named = Enum.flat_map(classes, fn {_source, class} -> named(class) end)

    kept =
      for {source, class} <- classes,
          kept?(class),
          node <- state.per_source[source].listed |> MapSet.to_list() |> Enum.sort(),
          do: node

    nodes = Enum.uniq(named ++ kept)
    {nodes, MapSet.new(nodes)}
  end

  defp named({:listed, nodes, _targets}), do: nodes
  defp named({:partial, nodes, _targets, _reason}), do: nodes
  defp named(_class), do: []

  defp kept?({:failed, _reason}), do: true
  defp kept?(_class), do: false

  # A source as the logs name it: its name, and its type unless SRV.
  defp label({name, :srv}), do: name
  defp label({name, type}), do: "#{name} (#{type |> Atom.to_string() |> String.upcase(:ascii)})"

  @doc """
  The strategy of `node` said at `now` that it is leaving (its node shuts down): it is not
  connected again while DNS still lists it, until it was seen disconnected and then connected
  again on its own, or for at most 30 s.
  """
  @spec peer_leaving(t(), node(), integer()) :: {t(), [action()]}
  def peer_leaving(state, node, now) do
    {%{state | peers_leaving: Map.put(state.peers_leaving, node, {now, false})},
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

  @doc "Whether this node is leaving: DNS listed it, and the latest poll that named anyone did not."
  @spec leaving?(t()) :: boolean()
  def leaving?(state), do: state.was_listed and state.self_listed == false

  # -- A poll that named someone --------------------------------------------------------------------

  defp apply_answer(state, nodes, listed, connected, now) do
    me = state.self
    # A queued retry of a node now connected by others, or no longer listed, is pointless: it
    # is dropped, and holds back no disconnect below.
    {pointless, jobs} = Enum.split_with(state.jobs, &pointless_retry?(&1, listed, connected))
    pointless = MapSet.new(pointless, fn {node, _job} -> node end)
    retries = :queue.filter(&(not MapSet.member?(pointless, &1)), state.retries)
    state = %{state | jobs: Map.new(jobs), retries: retries}

    # Known nodes, and nodes the last answer listed that are connected now: a node whose connect
    # failed and that then connected to us on its own before this answer is DNS's to drop too.
    known = MapSet.union(state.meta, MapSet.intersection(state.listed, connected))
    removed = MapSet.difference(known, listed)

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
    peers_leaving = peers_still_leaving(state.peers_leaving, listed, connected, now)

    to_connect =
      if leaving?(state),
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

  # A peer's mark holds while DNS lists it, for 30 s at most, and until it has been seen
  # disconnected (it was still connected when it said it was leaving) and then connected again:
  # it came back on its own, as a pod recreated under its name does.
  defp peers_still_leaving(marks, listed, connected, now) do
    Enum.reduce(marks, %{}, fn {node, {since, seen_gone?}}, kept ->
      connected? = MapSet.member?(connected, node)

      if now - since < @leaving_for and MapSet.member?(listed, node) and
           not (seen_gone? and connected?),
         do: Map.put(kept, node, {since, seen_gone? or not connected?}),
         else: kept
    end)
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
  defp dispatch(state) do
    if leaving?(state), do: {state, []}, else: dispatch(state, running_retries(state), [])
  end

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
  defp self_listing(state, listed) do
    cond do
      MapSet.member?(listed, state.self) ->
        logs =
          cond do
            leaving?(state) ->
              [{:log, :info, "this node is listed again: connecting as before"}]

            not state.was_listed and state.self_misses >= @self_check_after ->
              [{:log, :info, "this node is listed now, as #{inspect(state.self)}"}]

            true ->
              []
          end

        {%{state | self_listed: true, was_listed: true, self_misses: 0}, logs}

      state.was_listed ->
        logs =
          if leaving?(state),
            do: [],
            else: [
              {:log, :info,
               "this node (#{inspect(state.self)}) is no longer listed: its pod is leaving, so " <>
                 "it starts no new connects"}
            ]

        {%{state | self_listed: false}, logs}

      true ->
        misses = state.self_misses + 1
        check? = misses == @self_check_after and state.self != :nonode@nohost

        {%{state | self_listed: false, self_misses: misses},
         if(check?, do: [:self_check], else: [])}
    end
  end

  @doc """
  The self-check ended: `{:ok, causes}`, the causes it found for this node's name missing from
  the answers, each a map with `:cause` (an atom), `:message` and `:dialed` (what the others
  dial for this pod, or `nil`), each warned about; or `{:error, reason}` when it could not
  look up (its lookup failed, or its process died), in which case it runs again after 3 more
  answers without this node. Nothing is said once the node is listed.
  """
  @spec self_check_done(
          t(),
          {:ok, [%{cause: atom(), message: String.t(), dialed: String.t() | nil}]}
          | {:error, term()}
        ) :: {t(), [action()]}
  def self_check_done(%{self_listed: true} = state, _result), do: {state, []}

  def self_check_done(state, {:ok, causes}) do
    actions =
      for found <- causes do
        [
          {:log, :warning, found.message},
          {:emit, [:cluster_srv, :self_check], %{misses: state.self_misses},
           %{node: state.self, cause: found.cause, dialed: found.dialed}}
        ]
      end

    {state, List.flatten(actions)}
  end

  def self_check_done(state, {:error, reason}) do
    {%{state | self_misses: 0},
     [
       {:log, :warning,
        "this node (#{inspect(state.self)}) is not listed, and the check of why could not " <>
          "run: #{Reasons.describe_failure(reason)}; it runs again after " <>
          "#{@self_check_after} more answers without this node"}
     ]}
  end

  @doc """
  What the rules know, for `ClusterSRV.status/1`: `listed`, `connecting`, `unreachable` (each
  node with why), `pending_removals` (each node with the monotonic time, in ms, from which the
  next successful answer that still misses it disconnects it), `self_listed`, `leaving`,
  `failures` (polls in a row in which every source failed) and `failing` (each source that
  fails now, `{name, type}`, with why).
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
      leaving: leaving?(state),
      failures: state.per_source |> Map.values() |> Enum.map(& &1.failures) |> Enum.min(),
      failing:
        for(
          {source, %{failure: why}} <- state.per_source,
          why != nil,
          into: %{},
          do: {source, why}
        )
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
