defmodule ClusterSRV.Harness.Chaos.Invariants do
  @moduledoc """
  The chaos run's invariants, as pure functions of what it recorded (`ClusterSRV.Harness.Chaos.Journal`):
  the truth, which the run wrote itself (when each pod ran, when the zone listed it), and what
  each pod reported, with the times the pods' controllers stamped on their lines.

    * **a.** No strategy disconnects a pod that is alive and listed. A disconnect at `t` is a
      violation when the pod was alive and listed during the whole window `[t - window, t]`:
      `window` is the strategy's lookup deadline and a margin (an answer in flight may predate
      a change), plus `prune_grace`, plus, where a node is listed by only some of a strategy's
      sources, how long a failing source may keep its last list (`keep`).
    * **b.** A pod dropped from the zone and still alive when the faults stop is dropped by
      every strategy: no live pod of its group is connected to it `bound_b` after that
      (`prune_grace`, two intervals, and a lookup in flight).
    * **c.** After the faults stop, the live listed pods of each group form a full mesh within
      `bound_c`.
    * **d.** No long-lived pod (alive from the first quiet sample to the second) grows in
      processes, file descriptors, atoms or memory beyond the tolerances of `growth_limits/0`.
    * **e.** No strategy connects a pod that told it it is leaving (its node shutting down),
      while the zone still lists that pod, within the 30 s the mark holds.

  The truth events: `{:started, group, cluster, label, node, ip}` (the pod runs),
  `{:stopping, group, cluster, label, node, how}` (it is about to be stopped), `{:listed,
  group, cluster, node}` (recorded once the zone lists it) and `{:unlisted, group, cluster,
  node}` (recorded before the zone drops it), so that every window the checks see is, if
  anything, shorter than the truth's.
  """

  # What a long-lived pod may grow by between the two quiet samples (see growth_limits/0).
  @processes_per_peer 6
  @processes_slack 12
  @fds_per_peer 1
  @fds_slack 3
  @atoms_slack 20
  @atoms_per_module 100
  @memory_ratio 0.25
  @memory_slack 8 * 1024 * 1024

  @doc """
  The tolerances of invariant d, with why:

    * processes: #{@processes_per_peer} more per peer more than at the first sample (a
      distribution connection's controller, and `global`'s and the strategy's processes per
      node), plus #{@processes_slack} for a connect or lookup job in flight at the sample;
    * fds: #{@fds_per_peer} per peer more (its connection's socket), plus #{@fds_slack} for a
      lookup's or connect's socket open at the sample;
    * atoms: one per node name the run created in the pod's group after the first sample (a
      node's name is an atom in every VM that learns it, and is never freed), #{@atoms_per_module}
      per module loaded since (a code path taken for the first time, such as `erpc`'s or
      `global`'s when a peer leaves, brings its module's atoms: 3 modules brought 131 in these
      pods), plus #{@atoms_slack};
    * memory: #{round(@memory_ratio * 100)} % plus #{div(@memory_slack, 1024 * 1024)} MB (the
      heaps of processes collected at their own pace, distribution buffers per peer).
  """
  def growth_limits do
    %{
      processes_per_peer: @processes_per_peer,
      processes_slack: @processes_slack,
      fds_per_peer: @fds_per_peer,
      fds_slack: @fds_slack,
      atoms_slack: @atoms_slack,
      atoms_per_module: @atoms_per_module,
      memory_ratio: @memory_ratio,
      memory_slack: @memory_slack
    }
  end

  @doc """
  Checks every invariant. `setup` has `groups` (by name: `window`, `bound_b`, `bound_c`,
  `lookup`, the lookup deadline with its margin), `t0` (the run's start, for the report's
  times), `quiet_at` (the faults stopped), `sample_at` (the first quiet sample), `end_at` (the
  second, and the end) and `faults` (the proxy's injected faults, to explain violations).

  Returns `%{violations: %{a: [...], ...}, mesh: %{group => ms | nil}, growth: [...]}`, each
  violation a map with `at` and `text`.
  """
  def check(events, setup) do
    truth = truth(events)
    reports = reports(events, truth)

    {mesh, c} = full_mesh(truth, reports, setup)
    {growth, d} = growth(truth, reports, setup)

    %{
      violations: %{
        a: disconnects(truth, reports, setup),
        b: dropped(truth, reports, setup),
        c: c,
        d: d,
        e: leaving(truth, reports, setup)
      },
      mesh: mesh,
      growth: growth
    }
  end

  # -- The truth ----------------------------------------------------------------------------------

  @doc false
  def truth(events) do
    empty = %{group: %{}, node: %{}, ip: %{}, started: %{}, alive: %{}, listed: %{}}

    Enum.reduce(events, empty, fn
      {at, :truth, {:started, group, cluster, label, node, ip}}, t ->
        %{
          t
          | group: Map.put(t.group, node, group),
            node: Map.put(t.node, {cluster, label}, node),
            ip: Map.update(t.ip, node, [{at, ip}], &(&1 ++ [{at, ip}])),
            started: Map.update(t.started, node, [at], &(&1 ++ [at])),
            alive: open(t.alive, node, at)
        }

      {at, :truth, {:stopping, _group, _cluster, _label, node, _how}}, t ->
        %{t | alive: close(t.alive, node, at)}

      {at, :truth, {:listed, _group, _cluster, node}}, t ->
        %{t | listed: open(t.listed, node, at)}

      {at, :truth, {:unlisted, _group, _cluster, node}}, t ->
        %{t | listed: close(t.listed, node, at)}

      _other, t ->
        t
    end)
  end

  defp open(intervals, node, at) do
    case Map.get(intervals, node, []) do
      [{_from, :open} | _] = already -> Map.put(intervals, node, already)
      list -> Map.put(intervals, node, [{at, :open} | list])
    end
  end

  defp close(intervals, node, at) do
    case Map.get(intervals, node, []) do
      [{from, :open} | rest] -> Map.put(intervals, node, [{from, at} | rest])
      _ -> intervals
    end
  end

  # Whether one of the node's intervals holds the whole of [from, to].
  defp covered?(intervals, node, from, to) do
    intervals
    |> Map.get(node, [])
    |> Enum.any?(fn {start, stop} -> start <= from and (stop == :open or stop >= to) end)
  end

  defp since(intervals, node, at) do
    Enum.find_value(Map.get(intervals, node, []), fn {start, stop} ->
      if start <= at and (stop == :open or stop >= at), do: start
    end)
  end

  # Each pod's reports, by node: members over time, and its other events in order.
  defp reports(events, truth) do
    Enum.reduce(events, %{}, fn
      {at, {:pod, cluster, label}, event}, acc ->
        case truth.node[{cluster, label}] do
          nil ->
            acc

          node ->
            entry =
              case event do
                :exited -> {at, {:members, MapSet.new()}}
                event -> {at, event}
              end

            Map.update(acc, node, [entry], &[entry | &1])
        end

      _other, acc ->
        acc
    end)
    |> Map.new(fn {node, list} -> {node, Enum.reverse(list)} end)
  end

  defp members_at(reports, node, at) do
    reports
    |> Map.get(node, [])
    |> Enum.reduce_while(MapSet.new(), fn
      {t, {:members, members}}, _acc when t <= at -> {:cont, members}
      {t, _}, acc when t <= at -> {:cont, acc}
      _, acc -> {:halt, acc}
    end)
  end

  defp group_nodes(truth, group), do: for({node, ^group} <- truth.group, do: node)

  # -- a. No live, listed pod disconnected ---------------------------------------------------------

  defp disconnects(truth, reports, setup) do
    for {pod, list} <- reports,
        {at, {:disconnect, node}} <- list,
        group = truth.group[pod],
        truth.group[node] == group,
        window = setup.groups[group].window,
        covered?(truth.alive, node, at - window, at),
        covered?(truth.listed, node, at - window, at) do
      %{
        at: at,
        group: group,
        text:
          "#{rel(setup, at)} #{group}: #{short(pod)}'s strategy disconnected #{short(node)}, " <>
            "alive since #{rel(setup, since(truth.alive, node, at))} and listed since " <>
            "#{rel(setup, since(truth.listed, node, at))} (window #{window} ms); " <>
            explain(truth, reports, setup, pod, node, at, setup.groups[group].lookup)
      }
    end
    |> Enum.sort_by(& &1.at)
  end

  # What the pod saw before `at`: the proxy's faults on its queries for the disconnected
  # node's own name (its address), on its other queries, and its lookups.
  defp explain(truth, reports, setup, pod, node, at, within) do
    ips = for {t, ip} <- Map.get(truth.ip, pod, []), t <= at, do: ip
    ip = List.last(ips)
    own? = own_name(node)

    {own, other} =
      setup.faults
      |> Enum.filter(&(&1.client == ip and &1.at >= at - within and &1.at <= at))
      |> Enum.split_with(&own?.(&1.name))

    lookups =
      for {t, {:lookup, result, nodes}} <- Map.get(reports, pod, []),
          t >= at - within and t <= at,
          do: "#{result} #{nodes} nodes (#{rel(setup, t)})"

    "in the #{within} ms before, faults on its queries for #{short(node)}'s own name: " <>
      faults_text(own, setup) <>
      "; on its other queries: " <>
      faults_text(other, setup) <> "; its lookups: " <> Enum.join(lookups, ", ")
  end

  defp faults_text([], _setup), do: "none"

  defp faults_text(faults, setup) do
    Enum.map_join(faults, ", ", fn f ->
      "#{f.kind} #{f.type |> to_string() |> String.upcase()} #{f.name} (#{rel(setup, f.at)})"
    end)
  end

  # Whether a name is the node's own: its host name, or the dashed-IP name SRV targets give a
  # node named after its address.
  defp own_name(node) do
    [_app, host] = node |> Atom.to_string() |> String.split("@", parts: 2)
    dashed = String.replace(host, [".", ":"], "-") <> "."
    fn name -> name == host or String.starts_with?(name, dashed) end
  end

  # -- b. A pod dropped from the zone is dropped by everyone ---------------------------------------

  defp dropped(truth, reports, setup) do
    q = setup.quiet_at

    for {node, group} <- truth.group,
        covered?(truth.alive, node, q, setup.end_at),
        not covered?(truth.listed, node, q, q),
        bound = setup.groups[group].bound_b,
        checked = q + bound,
        pod <- group_nodes(truth, group),
        pod != node,
        covered?(truth.alive, pod, q, checked),
        MapSet.member?(members_at(reports, pod, checked), node) do
      unlisted = last_unlisted(truth, node, q)

      %{
        at: checked,
        group: group,
        text:
          "#{rel(setup, checked)} #{group}: #{short(pod)} is still connected to #{short(node)}, " <>
            "alive and unlisted since #{rel(setup, unlisted)}, #{bound} ms after the faults " <>
            "stopped; " <> left_at(reports, pod, node, checked, setup)
      }
    end
    |> Enum.sort_by(& &1.at)
  end

  defp last_unlisted(truth, node, at) do
    truth.listed
    |> Map.get(node, [])
    |> Enum.find_value(fn {_start, stop} -> if stop != :open and stop <= at, do: stop end)
  end

  defp left_at(reports, pod, node, after_at, setup) do
    case Enum.find(Map.get(reports, pod, []), fn
           {t, {:members, members}} -> t > after_at and not MapSet.member?(members, node)
           _ -> false
         end) do
      {t, _} -> "it left that view at #{rel(setup, t)}"
      nil -> "it never left that view"
    end
  end

  # -- c. A full mesh after the faults ---------------------------------------------------------------

  defp full_mesh(truth, reports, setup) do
    q = setup.quiet_at

    results =
      for {group, spec} <- setup.groups do
        live =
          for node <- group_nodes(truth, group),
              covered?(truth.alive, node, q, setup.end_at),
              covered?(truth.listed, node, q, setup.end_at),
              do: node

        meshed? = fn at ->
          Enum.all?(live, fn pod ->
            MapSet.subset?(MapSet.delete(MapSet.new(live), pod), members_at(reports, pod, at))
          end)
        end

        times =
          for(
            pod <- live,
            {t, {:members, _}} <- Map.get(reports, pod, []),
            t > q and t <= setup.end_at,
            do: t
          )

        meshed_at = Enum.find(Enum.sort([q | times]), meshed?)
        ms = meshed_at && meshed_at - q

        violation =
          if ms == nil or ms > spec.bound_c do
            %{
              at: q + spec.bound_c,
              group: group,
              text:
                "#{rel(setup, q + spec.bound_c)} #{group}: the #{length(live)} live listed pods " <>
                  "were not in a full mesh #{spec.bound_c} ms after the faults stopped " <>
                  if(ms, do: "(it took #{ms} ms)", else: "(nor by the end)") <>
                  "; at the bound: " <> missing(live, reports, q + spec.bound_c)
            }
          end

        {{group, ms}, violation}
      end

    {Map.new(results, &elem(&1, 0)), for({_, v} <- results, v != nil, do: v)}
  end

  defp missing(live, reports, at) do
    Enum.map_join(live, "; ", fn pod ->
      lacks = MapSet.difference(MapSet.new(live -- [pod]), members_at(reports, pod, at))

      if MapSet.size(lacks) == 0,
        do: "#{short(pod)} sees all",
        else: "#{short(pod)} lacks #{Enum.map_join(lacks, " ", &short/1)}"
    end)
  end

  # -- d. No growth in long-lived pods -------------------------------------------------------------

  defp growth(truth, reports, setup) do
    {s1, s2} = {setup.sample_at, setup.end_at}

    results =
      for {node, group} <- truth.group,
          covered?(truth.alive, node, s1, s2),
          first = sample(reports, node, s1),
          last = sample(reports, node, s2),
          first != nil and last != nil do
        {at1, v1} = first
        {at2, v2} = last

        peers =
          MapSet.size(members_at(reports, node, at2)) -
            MapSet.size(members_at(reports, node, at1))

        more_peers = max(peers, 0)

        new_names =
          Enum.count(group_nodes(truth, group), fn other ->
            case truth.started[other] do
              [first_start | _] -> first_start > s1 and first_start <= s2
              _ -> false
            end
          end)

        limits = %{
          processes: v1.processes + @processes_per_peer * more_peers + @processes_slack,
          fds: v1.fds + @fds_per_peer * more_peers + @fds_slack,
          atoms:
            v1.atoms + new_names + @atoms_slack +
              @atoms_per_module * max(v2.modules - v1.modules, 0),
          memory: round(v1.memory * (1 + @memory_ratio)) + @memory_slack
        }

        over =
          for metric <- [:processes, :fds, :atoms, :memory],
              Map.fetch!(v2, metric) > limits[metric] do
            %{
              at: at2,
              group: group,
              text:
                "#{rel(setup, at2)} #{group}: #{short(node)}'s #{metric} grew from " <>
                  "#{Map.fetch!(v1, metric)} (#{rel(setup, at1)}) to #{Map.fetch!(v2, metric)}, " <>
                  "past #{limits[metric]} (peers #{if peers >= 0, do: "+"}#{peers}, " <>
                  "#{new_names} new node names, #{v2.modules - v1.modules} modules loaded)"
            }
          end

        {%{node: node, group: group, from: v1, to: v2, peers: peers, new_names: new_names}, over}
      end

    {Enum.map(results, &elem(&1, 0)), results |> Enum.flat_map(&elem(&1, 1))}
  end

  # The pod's last VM sample at or before `at`, if it is recent (within two report periods).
  defp sample(reports, node, at) do
    reports
    |> Map.get(node, [])
    |> Enum.filter(&match?({t, {:vm, _}} when t <= at and t >= at - 5_000, &1))
    |> List.last()
    |> case do
      {t, {:vm, v}} -> {t, v}
      nil -> nil
    end
  end

  # -- e. No connect to a pod that is leaving -------------------------------------------------------

  @leaving_for 30_000

  defp leaving(truth, reports, setup) do
    for {pod, list} <- reports,
        {marked, {:log, line}} <- list,
        node = leaving_node(line),
        node != nil,
        {at, {:connect, ^node}} <- list,
        at > marked and at < marked + @leaving_for,
        covered?(truth.listed, node, marked, at),
        not Enum.any?(Map.get(truth.started, node, []), &(&1 > marked and &1 <= at)) do
      group = truth.group[pod]

      %{
        at: at,
        group: group,
        text:
          "#{rel(setup, at)} #{group}: #{short(pod)}'s strategy connected #{short(node)}, " <>
            "which told it at #{rel(setup, marked)} that it is leaving, and is still listed"
      }
    end
    |> Enum.sort_by(& &1.at)
  end

  defp leaving_node(line) do
    case Regex.run(~r/ (:"[^"]+"|:[\w@.-]+) is leaving \(its node is shutting down\)/, line) do
      [_, quoted] ->
        quoted
        |> String.trim_leading(":")
        |> String.trim("\"")
        |> String.to_existing_atom()

      nil ->
        nil
    end
  rescue
    ArgumentError -> nil
  end

  # -- Wording --------------------------------------------------------------------------------------

  @doc "A time as the report gives it: seconds since the run started, `+12.3 s`."
  def rel(_setup, nil), do: "(never)"
  def rel(%{t0: t0}, at), do: "+#{:erlang.float_to_binary((at - t0) / 1000, decimals: 1)} s"

  @doc "A node as the report names it: its pod's host name, or `app@ip`."
  def short(node) do
    [app, host] = node |> Atom.to_string() |> String.split("@", parts: 2)

    if host =~ ~r/\A[\d.]+\z/ or String.contains?(host, ":"),
      do: "#{app}@#{host}",
      else: host |> String.split(".") |> hd()
  end
end
