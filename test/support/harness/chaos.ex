defmodule ClusterSRV.Harness.Chaos do
  @moduledoc """
  The chaos soak: several clusters of real pods in the namespace cluster, polling every second,
  while a DNS proxy injects partial faults (`ClusterSRV.Harness.DNSProxy`), BIND is restarted
  now and then, and pods join, leave, die, drop out of the zone and come back, and roll; then a
  quiet phase with no faults. It checks what `ClusterSRV.Harness.Chaos.Invariants` says must
  hold, against the truth it wrote itself, and reports.

      report = ClusterSRV.Harness.Chaos.run(seconds: 60, seed: 1)
      report.violations   #=> 0 on a correct strategy
      IO.puts(report.text)

  The groups of pods, each its own mesh (3 to 5 pods):

    * `sts` - a StatefulSet, `node_naming: :hostname`, one SRV query;
    * `ipsrv` - dashed-IP SRV targets, `node_naming: :ip` (addresses from the additional
      section, or looked up when it has none);
    * `dc` - dns_cluster's form: two queries, `dca` and `dcb` (two services of one app),
      `resource_types: [:a, :aaaa]`;
    * `mixed` - the SRV and A records of one service (`dns_rr_types: [:srv, :a]`), with
      `prune_grace: 2000`.

  The run, `seconds` of faults in all: the pods start and mesh with no faults; a warm-up of
  faults and changes; a quiet moment (no faults, no changes) for the first sample of every
  pod's VM figures (the first pod of each service is never stopped, so that some pods live
  through both samples); faults and changes again; a closing move that leaves, in every group, a
  pod alive but out of the zone (in `dc`, a whole service), so that invariant b always has
  something to check; then the quiet phase, and the second sample at its end. The changes
  come from a `:rand` state seeded with `seed`, as do the proxy's faults: a seed replays the
  schedule (its times move with the machine's speed, and a change that is not possible when
  its turn comes is skipped). Every pod started takes a new address of the pod network's 245:
  after 230, a long run starts no more pods, and goes on with the other changes.
  """

  alias ClusterSRV.Harness.{DNS, DNSProxy, NetnsCluster, Network, Pod}
  alias ClusterSRV.Harness.Chaos.{Invariants, Journal}
  alias ClusterSRV.Resolver

  @interval 1_000
  # Every strategy's resolver: short tries, so that a fault is over within a poll or two.
  @timeout 1_000
  @attempts 2
  # The longest one client's name and type is let fail in a row (DNSProxy's guard).
  @max_failing 3_000
  # OTP's net_setuptime: a connection setup begun during the faults may wait this long.
  @setuptime 7_000
  # The longest BIND is down at a restart: the pause, and its start (about a second).
  @bind_down 2_500

  @faults [
    drop: 0.03,
    delay: 0.02,
    udp_truncate: 0.08,
    tcp_truncate: 0.4,
    strip_additional: 0.2,
    no_additional_a: 0.1,
    servfail: 0.03,
    refused: 0.02,
    nxdomain: 0.1
  ]

  @doc """
  The fault rates of the run, by kind (see `ClusterSRV.Harness.DNSProxy`). Additional-section
  faults are frequent so that `node_naming: :ip` strategies must often look up addresses one
  by one (where a sub-query can fail); TCP truncation is frequent among TCP queries, which
  follow a UDP truncation; the others are rarer, since each costs a try.
  """
  def faults, do: @faults

  @doc """
  Runs the soak and returns `%{text, violations, faults, changes, seed}`. Options: `:seconds`
  (of faults), `:seed`, `:say` (a function given each progress line; default `IO.puts/1`),
  `:dump` (a file to write everything the run recorded to, as an Erlang term: `events`, the
  proxy's `faults` and the checks' `setup`).
  """
  def run(opts) do
    seconds = Keyword.fetch!(opts, :seconds)
    seed = Keyword.fetch!(opts, :seed)
    say = Keyword.get(opts, :say, &IO.puts/1)
    t0 = now()

    say.(
      "chaos: seed #{seed}; #{seconds} s of faults on #{length(groups())} groups of pods, " <>
        "then #{div(quiet_ms(), 1000)} s of quiet (replay with CHAOS_SEED=#{seed})"
    )

    network =
      Network.start!(proxy: [seed: seed, client_timeout: @timeout, max_failing: @max_failing])

    journal = Journal.start_link()

    # Made before anything can fail, so that stop/1 has them: a cluster stops every pod it ever
    # started, whichever copy of it is stopped.
    clusters =
      for group <- groups(), spec <- group.clusters, into: %{} do
        {spec.service,
         NetnsCluster.start!(
           network: network,
           service: spec.service,
           app: spec.app,
           layout: spec.layout,
           polling_interval: @interval,
           config: spec.config ++ [timeout: @timeout, attempts: @attempts],
           subscriber: Journal.relay(journal, spec.service)
         )}
      end

    run = %{
      t0: t0,
      say: say,
      seed: seed,
      dump: Keyword.get(opts, :dump),
      network: network,
      proxy: Network.proxy(network),
      journal: journal,
      rand: :rand.seed_s(:exsss, {seed, 0xC4A05, 1}),
      clusters: clusters,
      changes: %{},
      addresses: 0,
      steps: 0,
      last_bind: 0,
      last_outage: 0
    }

    try do
      soak(run, seconds)
    after
      stop(run)
    end
  end

  defp soak(run, seconds) do
    run = start_groups(run)
    faults_from = now()
    warm = min(15_000, div(seconds * 1000, 4))
    moment = 6_000

    DNSProxy.set_faults(run.proxy, @faults)
    tell(run, "faults on")
    run = chaos_until(run, faults_from + warm)

    DNSProxy.pause_faults(run.proxy)
    tell(run, "a quiet moment: no faults, no changes, for the first sample")
    Process.sleep(moment)
    sample_at = now()
    DNSProxy.resume_faults(run.proxy)
    tell(run, "faults on again")
    run = chaos_until(run, faults_from + seconds * 1000 + moment)

    run = closing_move(run)
    DNSProxy.pause_faults(run.proxy)
    quiet_at = now()
    Journal.record(run.journal, {:phase, :quiet}, quiet_at)
    tell(run, "the faults stop: quiet for #{div(quiet_ms(), 1000)} s")
    Process.sleep(quiet_ms())
    end_at = now()

    report(run, %{sample_at: sample_at, quiet_at: quiet_at, end_at: end_at})
  end

  defp stop(run) do
    for {_, cluster} <- run.clusters, do: NetnsCluster.stop(cluster)
    Network.stop(run.network)
    Journal.stop(run.journal)
  end

  # -- The groups ---------------------------------------------------------------------------------

  @dc_queries ["dca.default.svc.cluster.local", "dcb.default.svc.cluster.local"]

  defp groups do
    [
      %{
        name: "sts",
        what: "a StatefulSet, node_naming: :hostname, one SRV query",
        naming: :hostname,
        grace: 0,
        keep: 0,
        clusters: [%{service: "sts", app: "sts", layout: :statefulset, pods: 4, config: []}]
      },
      %{
        name: "ipsrv",
        what: "dashed-IP SRV targets, node_naming: :ip",
        naming: :ip,
        grace: 0,
        keep: 0,
        clusters: [%{service: "ipsrv", app: "ipsrv", layout: :pod_ip, pods: 3, config: []}]
      },
      %{
        name: "dc",
        what:
          "dns_cluster's form: two queries (services dca and dcb), resource_types [:a, :aaaa]",
        naming: :ip,
        grace: 0,
        # A node only one query lists: that query's A source may fail, keeping its last list,
        # for as long as the proxy lets it fail, plus a BIND restart and a poll either side.
        keep: @max_failing + @bind_down + 2 * @interval,
        clusters:
          for service <- ["dca", "dcb"] do
            %{
              service: service,
              app: "dc",
              layout: :pod_ip,
              # Pod names of their own (a ReplicaSet each), as the services share the app.
              template: service,
              pods: 2,
              config: [query: @dc_queries, resource_types: [:a, :aaaa], prune: true]
            }
          end
      },
      %{
        name: "mixed",
        what: "SRV and A records of one service (dns_rr_types [:srv, :a]), prune_grace: 2000",
        naming: :ip,
        grace: 2_000,
        keep: 0,
        clusters: [
          %{
            service: "mixed",
            app: "mixed",
            layout: :pod_ip,
            pods: 3,
            config: [dns_rr_types: [:srv, :a], prune_grace: 2_000]
          }
        ]
      }
    ]
  end

  # Each group's live pods stay within these bounds (a dns_cluster service may shrink to one).
  @group_min 3
  @group_max 5
  # A group keeps at least this many pods in the zone, so that its mesh means something and no
  # strategy's poll is left with no valid node.
  @min_listed 2
  # The pod network holds 245 addresses, and every pod started takes a new one.
  @addresses 230

  defp group_of(service),
    do: Enum.find(groups(), fn g -> Enum.any?(g.clusters, &(&1.service == service)) end)

  # The lookup deadline of a group's strategies, with the margin their callers wait.
  defp lookup_ms(group) do
    Resolver.reply_timeout([timeout: @timeout, attempts: @attempts],
      fill_addresses: group.naming == :ip
    )
  end

  defp bounds(group) do
    lookup = lookup_ms(group)

    %{
      lookup: lookup,
      window: lookup + group.grace + group.keep,
      bound_b: group.grace + 2 * @interval + lookup,
      # A connection setup begun during the faults may wait on a lost datagram of the system
      # resolver (5 s a try) or a gone address until net_setuptime ends it, and meanwhile OTP's
      # handshake turns away the other side's connect; then two polls connect what is missing.
      bound_c: max(lookup, @setuptime) + 2 * @interval
    }
  end

  defp quiet_ms do
    groups()
    |> Enum.map(&bounds/1)
    |> Enum.map(&max(&1.bound_b, &1.bound_c))
    |> Enum.max()
    |> Kernel.+(2 * @interval)
  end

  defp start_groups(run) do
    run =
      Enum.reduce(groups(), run, fn group, run ->
        Enum.reduce(group.clusters, run, fn spec, run ->
          cluster = run.clusters[spec.service]
          {cluster, pods} = NetnsCluster.add_pods(cluster, spec.pods, template(spec))
          run = put_in(run.clusters[spec.service], cluster)
          at = now()
          run = %{run | addresses: run.addresses + spec.pods}
          for pod <- pods, do: started(run, spec.service, pod, at)
          run
        end)
      end)

    for group <- groups() do
      case Pod.await_mesh(group_pods(run, group), 60_000) do
        {:ok, _} -> :ok
        {:error, members} -> raise "#{group.name} formed no mesh at start: #{inspect(members)}"
      end
    end

    tell(run, "#{map_size(run.clusters)} services, #{length(all_pods(run))} pods, in full meshes")
    run
  end

  defp template(spec), do: if(spec[:template], do: [template: spec.template], else: [])

  defp group_pods(run, group),
    do: Enum.flat_map(group.clusters, &NetnsCluster.pods(run.clusters[&1.service]))

  defp all_pods(run), do: Enum.flat_map(groups(), &group_pods(run, &1))

  defp listed?(run, service, pod) do
    cluster = run.clusters[service]

    Enum.any?(NetnsCluster.service(cluster).pods, fn {label, ip} ->
      label == pod.label and ip == pod.ip
    end)
  end

  defp group_listed(run, group) do
    for spec <- group.clusters,
        pod <- NetnsCluster.pods(run.clusters[spec.service]),
        listed?(run, spec.service, pod),
        do: pod
  end

  # -- The changes --------------------------------------------------------------------------------

  defp chaos_until(run, deadline) do
    if now() >= deadline do
      run
    else
      {pause, rand} = :rand.uniform_s(1_000, run.rand)
      Process.sleep(min(200 + pause, max(deadline - now(), 0)))
      run = %{run | rand: rand}
      run = if now() < deadline, do: step(run), else: run
      chaos_until(run, deadline)
    end
  end

  # The kinds of change, each with its weight. A step draws a kind, a group, one of its services
  # and a pod, whatever the state, and makes the change only if it is possible then: the draws
  # of a seed are the same in every run, and so are the intentions, however fast pods start.
  @steps [
    join: 3,
    leave: 2,
    kill: 2,
    roll: 2,
    unlist: 2,
    relist: 3,
    unready: 1,
    bind_restart: 1,
    outage: 1
  ]

  defp step(run) do
    {kind, rand} = weighted(@steps, run.rand)
    {group, rand} = pick(groups(), rand)
    {spec, rand} = pick(group.clusters, rand)
    {which, rand} = :rand.uniform_s(rand)
    run = %{run | rand: rand, steps: run.steps + 1}

    case change_for(run, kind, group, spec, which) do
      nil -> run
      change -> act(run, change)
    end
  end

  defp weighted(weights, rand) do
    {draw, rand} = :rand.uniform_s(rand)
    total = weights |> Keyword.values() |> Enum.sum()

    kind =
      Enum.reduce_while(weights, draw * total, fn {kind, weight}, left ->
        if left < weight, do: {:halt, kind}, else: {:cont, left - weight}
      end)

    {if(is_atom(kind), do: kind, else: elem(List.last(weights), 0)), rand}
  end

  # The change a step's draws stand for, if it is possible now: `which` (in [0, 1)) chooses
  # the pod among those it may be made to.
  defp change_for(run, kind, group, spec, which) do
    service = spec.service
    pods = NetnsCluster.pods(run.clusters[service])
    live = length(group_pods(run, group))
    listed = length(group_listed(run, group))
    may_go = live > @group_min and length(pods) > 1
    listed_pods = Enum.filter(pods, &listed?(run, service, &1))

    case kind do
      :join ->
        if live < @group_max and run.addresses < @addresses, do: {:join, service}

      kind when kind in [:leave, :kill] ->
        if may_go, do: one(kind, service, mortal(pods), which)

      :roll ->
        # Only a StatefulSet recreates a pod under its name: whichever group was drawn.
        sts = Enum.find(groups(), &match?([%{layout: :statefulset}], &1.clusters))
        [%{service: sts_service}] = sts.clusters
        sts_pods = NetnsCluster.pods(run.clusters[sts_service])
        listed_sts = Enum.filter(mortal(sts_pods), &listed?(run, sts_service, &1))

        if run.addresses < @addresses,
          do: one(:roll, sts_service, listed_sts, which)

      :unlist ->
        if listed > @min_listed, do: one(:unlist, service, listed_pods, which)

      :relist ->
        one(:relist, service, pods -- listed_pods, which)

      :unready ->
        unready(run, group, spec, listed)

      # Counted in steps, not time, so that a seed replays them at the same steps.
      :bind_restart ->
        if run.steps - run.last_bind >= 15, do: :bind_restart

      :outage ->
        if run.steps - run.last_outage >= 8, do: :outage
    end
  end

  # The first pod of each service lives through the run (it may still leave the zone and come
  # back), so that invariant d always has long-lived pods to compare.
  defp mortal([_first | others]), do: others
  defp mortal([]), do: []

  defp one(_kind, _service, [], _which), do: nil

  defp one(kind, service, pods, which),
    do: {kind, service, Enum.at(pods, trunc(which * length(pods)))}

  # Only a pod whose strategy has seen itself listed is taken out of the zone: it then knows it
  # is leaving, and connects no one, as a pod DNS drops does (one that never saw itself
  # listed would connect the others, and they never disconnect a node no answer listed).
  # A new pod sees itself within a poll or two: it is waited for, so that a seed's changes do
  # not depend on how fast pods start.
  defp self_listed?(pod, deadline \\ now() + 5_000) do
    cond do
      Pod.info(pod).self_listed == true -> true
      now() >= deadline -> false
      true -> Process.sleep(50) && self_listed?(pod, deadline)
    end
  end

  # A whole service of the dns_cluster group going unready (its endpoints gone), which empties
  # one query's answer: where the other service keeps enough pods in the zone.
  defp unready(run, group, spec, listed) do
    pods = NetnsCluster.pods(run.clusters[spec.service])
    listed_here = Enum.count(pods, &listed?(run, spec.service, &1))

    if match?([_, _ | _], group.clusters) and listed_here > 0 and
         listed - listed_here >= @min_listed,
       do: {:unready, spec.service}
  end

  defp act(run, {:join, service}) do
    spec = Enum.find(group_of(service).clusters, &(&1.service == service))
    {cluster, [pod]} = NetnsCluster.add_pods(run.clusters[service], 1, template(spec))
    run = %{put_in(run.clusters[service], cluster) | addresses: run.addresses + 1}
    started(run, service, pod, now())
    change(run, :join, service, "#{name(pod)} joins")
  end

  # As Kubernetes stops a pod: SIGTERM, and the endpoints controller drops it from the service
  # a moment after it has exited (0.5 to 2 s here), while its peers were told it is leaving.
  defp act(run, {:leave, service, pod}) do
    {lag, rand} = :rand.uniform_s(1_500, run.rand)
    stopping(run, service, pod, :terminate)
    :ok = Pod.terminate(pod)
    Process.sleep(500 + lag)
    if listed?(run, service, pod), do: unlisted(run, service, pod)
    run = put_in(run.clusters[service], NetnsCluster.kill_pod(run.clusters[service], pod))

    change(
      %{run | rand: rand},
      :leave,
      service,
      "#{name(pod)} leaves (SIGTERM; out of the zone #{500 + lag} ms after it exited)"
    )
  end

  defp act(run, {:kill, service, pod}) do
    stopping(run, service, pod, :kill)
    if listed?(run, service, pod), do: unlisted(run, service, pod)
    run = put_in(run.clusters[service], NetnsCluster.kill_pod(run.clusters[service], pod))
    change(run, :kill, service, "#{name(pod)} is killed")
  end

  defp act(run, {:roll, service, pod}) do
    stopping(run, service, pod, :roll)
    unlisted(run, service, pod)
    {cluster, new} = NetnsCluster.restart_pod(run.clusters[service], pod)
    run = %{put_in(run.clusters[service], cluster) | addresses: run.addresses + 1}
    started(run, service, new, now())
    change(run, :roll, service, "#{name(pod)} is recreated under its name at #{ip(new)}")
  end

  defp act(run, {:unlist, service, pod}),
    do: unlist(run, service, pod, "#{name(pod)} goes out of the zone, alive")

  defp act(run, {:relist, service, pod}) do
    run = put_in(run.clusters[service], NetnsCluster.list(run.clusters[service], pod))
    Journal.record(run.journal, {:listed, group_of(service).name, service, pod.name})
    change(run, :relist, service, "#{name(pod)} is listed again")
  end

  defp act(run, {:unready, service}) do
    run.clusters[service]
    |> NetnsCluster.pods()
    |> Enum.filter(&listed?(run, service, &1))
    |> Enum.reduce(run, fn pod, run ->
      unlist(run, service, pod, "#{name(pod)} goes out of the zone with its whole service")
    end)
  end

  defp act(run, :bind_restart) do
    {pause, rand} = :rand.uniform_s(1_000, run.rand)
    dns = Network.dns(run.network)
    DNS.pause(dns)
    tell(run, "BIND stops for #{500 + pause} ms")
    Process.sleep(500 + pause)
    DNS.resume(dns)
    Journal.record(run.journal, {:bind, :restarted})
    count(%{run | rand: rand, last_bind: run.steps}, :bind_restart)
  end

  defp act(run, :outage) do
    {type, rand} = pick([:a, :aaaa, :srv], run.rand)
    {how, rand} = pick([:servfail, :drop], rand)
    {ms, rand} = :rand.uniform_s(1_500, rand)
    ms = 1_000 + ms
    DNSProxy.outage(run.proxy, type, ms, how)
    tell(run, "every #{type |> to_string() |> String.upcase()} query fails (#{how}) for #{ms} ms")
    Journal.record(run.journal, {:outage, type, ms, how})
    count(%{run | rand: rand, last_outage: run.steps}, :outage)
  end

  # The end of the faults leaves, in every group, a live pod out of the zone, and in the
  # dns_cluster group a whole service (one query's answer empty), for invariant b.
  defp closing_move(run) do
    Enum.reduce(groups(), run, fn
      %{clusters: [_, _ | _]} = group, run ->
        # The service with the fewest pods goes unready; the others are all listed.
        [target | others] =
          Enum.sort_by(
            group.clusters,
            &{length(NetnsCluster.pods(run.clusters[&1.service])), &1.service}
          )

        run =
          Enum.reduce(others, run, fn spec, run ->
            run.clusters[spec.service]
            |> NetnsCluster.pods()
            |> Enum.reject(&listed?(run, spec.service, &1))
            |> Enum.reduce(run, &act(&2, {:relist, spec.service, &1}))
          end)

        listed = length(group_listed(run, group))

        case unready(run, group, target, listed) do
          nil -> run
          change -> act(run, change)
        end

      %{clusters: [spec]}, run ->
        pods = NetnsCluster.pods(run.clusters[spec.service])
        listed = Enum.filter(pods, &listed?(run, spec.service, &1))

        if length(listed) == length(pods) and length(listed) > @min_listed,
          do: act(run, {:unlist, spec.service, List.last(listed)}),
          else: run
    end)
  end

  defp unlist(run, service, pod, text) do
    if self_listed?(pod) do
      unlisted(run, service, pod)
      run = put_in(run.clusters[service], NetnsCluster.unlist(run.clusters[service], pod))
      change(run, :unlist, service, text)
    else
      run
    end
  end

  defp pick(list, rand) do
    {i, rand} = :rand.uniform_s(length(list), rand)
    {Enum.at(list, i - 1), rand}
  end

  # -- The truth ----------------------------------------------------------------------------------

  defp started(run, service, pod, at) do
    group = group_of(service).name
    Journal.record(run.journal, {:started, group, service, pod.label, pod.name, pod.ip}, at)
    Journal.record(run.journal, {:listed, group, service, pod.name}, at)
  end

  defp stopping(run, service, pod, how) do
    group = group_of(service).name
    Journal.record(run.journal, {:stopping, group, service, pod.label, pod.name, how})
  end

  defp unlisted(run, service, pod),
    do: Journal.record(run.journal, {:unlisted, group_of(service).name, service, pod.name})

  defp change(run, kind, service, text) do
    tell(run, "#{group_of(service).name}: #{text}")
    count(run, kind)
  end

  defp count(run, kind), do: %{run | changes: Map.update(run.changes, kind, 1, &(&1 + 1))}

  defp tell(run, text), do: run.say.("[#{Invariants.rel(run, now())}] #{text}")

  defp name(pod), do: Invariants.short(pod.name)
  defp ip(pod), do: pod.ip |> :inet.ntoa() |> List.to_string()

  # -- The report ---------------------------------------------------------------------------------

  @pod_changes [:join, :leave, :kill, :roll, :unlist, :relist]

  defp report(run, phases) do
    counts = DNSProxy.counts(run.proxy)
    faults = DNSProxy.injected(run.proxy)
    events = Journal.events(run.journal)

    setup =
      Map.merge(phases, %{
        t0: run.t0,
        faults: faults,
        groups: Map.new(groups(), &{&1.name, bounds(&1)})
      })

    if run.dump,
      do: File.write!(run.dump, :erlang.term_to_binary(%{events: events, setup: setup}))

    result = Invariants.check(events, setup)
    violations = result.violations |> Map.values() |> Enum.map(&length/1) |> Enum.sum()
    # BIND's restarts are faults too; an outage of one type counts each query it failed.
    counts = Map.put(counts, :bind_restart, Map.get(run.changes, :bind_restart, 0))
    injected = counts |> Map.values() |> Enum.sum()
    changes = @pod_changes |> Enum.map(&Map.get(run.changes, &1, 0)) |> Enum.sum()

    started = Enum.count(events, &match?({_, :truth, {:started, _, _, _, _, _}}, &1))
    stopped = Enum.count(events, &match?({_, :truth, {:stopping, _, _, _, _, _}}, &1))

    text =
      Enum.join(
        [
          "",
          "chaos report: seed #{run.seed}; the faults stopped at #{Invariants.rel(run, phases.quiet_at)}, " <>
            "the run ended at #{Invariants.rel(run, phases.end_at)}",
          "groups: " <> Enum.map_join(groups(), "; ", &"#{&1.name} (#{&1.what})"),
          "faults injected, by kind: " <>
            Enum.map_join(DNSProxy.kinds() ++ [:type_outage, :bind_restart], ", ", fn kind ->
              "#{kind} #{Map.get(counts, kind, 0)}"
            end) <>
            " (type_outage: queries failed in #{Map.get(run.changes, :outage, 0)} outages)",
          "pod changes: " <>
            Enum.map_join(@pod_changes, ", ", &"#{&1} #{Map.get(run.changes, &1, 0)}") <>
            "; pods started #{started}, stopped #{stopped}",
          "invariants:"
        ] ++
          invariant_lines(result, setup) ++
          [
            "chaos: #{injected} faults injected, #{changes} pod changes, #{violations} violations (seed #{run.seed})"
          ],
        "\n"
      )

    %{text: text, violations: violations, faults: injected, changes: changes, seed: run.seed}
  end

  @titles [
    a: "no strategy disconnects a live, listed pod",
    b: "a live pod out of the zone is dropped by every strategy after the faults",
    c: "a full mesh of the live listed pods after the faults",
    d: "no growth in processes, fds, atoms or memory of long-lived pods",
    e: "no strategy connects a pod that said it is leaving, while it is listed"
  ]

  defp invariant_lines(result, setup) do
    Enum.flat_map(@titles, fn {key, title} ->
      found = result.violations[key]
      detail = detail(key, result, setup)

      ["  #{key}. #{title}: #{length(found)} violations#{detail}"] ++
        Enum.map(Enum.take(found, 20), &("     " <> &1.text)) ++
        if(length(found) > 20, do: ["     ... and #{length(found) - 20} more"], else: [])
    end)
  end

  defp detail(:a, _result, setup),
    do:
      " (windows: " <>
        Enum.map_join(setup.groups, ", ", fn {g, b} -> "#{g} #{b.window} ms" end) <> ")"

  defp detail(:b, _result, setup),
    do:
      " (bounds: " <>
        Enum.map_join(setup.groups, ", ", fn {g, b} -> "#{g} #{b.bound_b} ms" end) <> ")"

  defp detail(:c, result, setup) do
    " (bound #{setup.groups |> Map.values() |> Enum.map(& &1.bound_c) |> Enum.max()} ms; took " <>
      Enum.map_join(result.mesh, ", ", fn {g, ms} ->
        "#{g} #{if ms, do: "#{ms} ms", else: "-"}"
      end) <>
      ")"
  end

  defp detail(:d, result, _setup) do
    case result.growth do
      [] ->
        " (no pod lived through both samples)"

      growth ->
        most = fn metric ->
          growth |> Enum.map(&(&1.to[metric] - &1.from[metric])) |> Enum.max()
        end

        ratio = growth |> Enum.map(&(&1.to.memory / &1.from.memory)) |> Enum.max()

        " (#{length(growth)} pods; most growth: processes #{most.(:processes)}, fds " <>
          "#{most.(:fds)}, atoms #{most.(:atoms)}, memory " <>
          "#{:erlang.float_to_binary((ratio - 1) * 100, decimals: 1)} %)"
    end
  end

  defp detail(:e, _result, _setup), do: ""

  defp now, do: System.monotonic_time(:millisecond)
end
