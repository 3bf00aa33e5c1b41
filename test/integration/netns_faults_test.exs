defmodule ClusterSRV.Integration.NetnsFaultsTest do
  # Faults that only a network of namespaces can play: a DNS restart under a service whose
  # answer needs TCP, a partition longer than net_ticktime, a StatefulSet pod recreated under
  # its name, DNS packet loss, and per-node caching DNS servers with stale answers. Each test
  # runs its own service on one shared cluster network, and stops its pods when it ends.
  use ClusterSRV.Harness.NetnsCase

  @moduletag timeout: 180_000

  alias ClusterSRV.Harness.{DNS, Netns, NetnsCluster, Network, Pod}

  defp assert_no_lost_links(cluster, since) do
    lost = NetnsCluster.lost_links(cluster, since)

    assert lost == [],
           "live, listed pods were disconnected: #{inspect(lost)}\n" <>
             NetnsCluster.timeline(cluster, since)
  end

  # The strategy's successful lookups in a pod that listed `count` nodes, at or after `since`.
  defp lookups_listing(pod, count, since) do
    for {at, ":ok", ^count} <- Pod.info(pod).lookups, at >= since, do: at
  end

  describe "a DNS restart" do
    # 8 ports: CoreDNS lists one SRV record per pod and port, so even 3 pods' answer (24
    # records, about 1.7 KB) is past the 1,232 bytes the resolver advertises, as ~20
    # single-port pods would be: the strategy must ask over TCP.
    @ports for k <- 0..7, do: {"port#{k}", "tcp", 4369 + k}

    test "long-lived strategies polling a TCP-sized service see a new pod within 2 intervals after DNS is back",
         %{network: network} do
      cluster = cluster!(network, "big", ports: @ports)
      started = now()
      {cluster, old} = NetnsCluster.add_pods(cluster, 3)
      assert_mesh(cluster, 5 * @interval, started)

      # The answer really needs TCP: over UDP it comes truncated.
      {answer, 0} =
        Netns.cmd(
          network.ns,
          ~w(dig +bufsize=1232 +ignore @10.96.0.10 big.default.svc.cluster.local SRV)
        )

      assert answer =~ ~r/flags: [a-z ]*\btc\b/, answer

      # Every strategy has polled the big answer successfully before the restart.
      assert eventually(
               fn -> Enum.all?(old, &(lookups_listing(&1, 3, started) != [])) end,
               now() + 5_000
             )

      dns = Network.dns(network)
      DNS.pause(dns)
      DNS.resume(dns)

      listed_at = now()
      {cluster, [new]} = NetnsCluster.add_pods(cluster, 1)
      deadline = listed_at + 2 * @interval

      saw_new = fn pod -> Enum.any?(lookups_listing(pod, 4, listed_at), &(&1 <= deadline)) end
      eventually(fn -> Enum.all?(old, saw_new) end, deadline + 100)
      blind = for pod <- old, not saw_new.(pod), do: pod.label

      assert blind == [],
             "#{inspect(blind)} did not list #{new.label} within 2 intervals after DNS came back:\n" <>
               NetnsCluster.timeline(cluster, listed_at - 3_000)

      assert_mesh(cluster, 2 * @interval, listed_at)
      assert_no_lost_links(cluster, started)
    end
  end

  # Short, so that a partition outlasts it quickly; every pod of a partitioned cluster uses it.
  @ticktime 4

  # Four pods in a full mesh, then the second cut off (`how`: :link or :reject) until both
  # sides have noticed and twice net_ticktime has passed, then restored.
  defp partition_and_heal(network, service, how) do
    cluster = cluster!(network, service, erl: "-kernel net_ticktime #{@ticktime}")
    {cluster, pods} = NetnsCluster.add_pods(cluster, 4)
    assert_mesh(cluster, 5 * @interval, now())
    [_, victim | _] = pods
    others = List.delete(pods, victim)

    cut_at = now()
    NetnsCluster.partition(cluster, victim, how)

    noticed =
      eventually(
        fn ->
          Pod.members(victim) == MapSet.new() and
            Enum.all?(others, &(victim.name not in Pod.members(&1)))
        end,
        cut_at + 3 * @ticktime * 1_000
      )

    assert noticed, NetnsCluster.timeline(cluster, cut_at)
    noticed_after = now() - cut_at

    Process.sleep(max(cut_at + 2 * @ticktime * 1_000 - now(), 0))
    NetnsCluster.heal(cluster, victim, how)

    %{
      cluster: cluster,
      pods: pods,
      cut_at: cut_at,
      noticed_after: noticed_after,
      healed_at: now()
    }
  end

  # After partition_and_heal/3: the full mesh is back within `bound` ms of the heal (waiting
  # up to `wait` ms to say how late it is), and no strategy disconnected anyone meanwhile.
  defp assert_healed(cut, wait, bound) do
    ms = assert_mesh(cut.cluster, wait, cut.cut_at)

    assert ms <= bound,
           "back in the full mesh #{ms} ms after the partition ended:\n" <>
             NetnsCluster.timeline(cut.cluster, cut.healed_at)

    for pod <- cut.pods do
      assert Pod.info(pod).disconnects == [], NetnsCluster.timeline(cut.cluster, cut.cut_at)
    end
  end

  describe "a partition" do
    # OTP's default: a connection setup gives up after this long.
    @setuptime 7_000

    # Why not within one interval: while the pod was cut off, the others' strategies kept
    # connecting to it (DNS still lists it), and so did OTP's global. Each such setup waits in
    # TCP's SYN back-off until net_setuptime. After the link returns, a node whose own setup to
    # the pod is still pending turns the pod's connection away (OTP's handshake keeps the
    # pending one), and global, seeing connections come back unevenly, disconnects pods to
    # prevent overlapping partitions, even pods that were never cut off. The strategies
    # connect again at their next poll, so the mesh is whole one interval after the last such
    # setup has ended: within net_setuptime and one interval.
    test "a pod cut off for longer than net_ticktime is back in the full mesh after its link returns, and no strategy dropped it",
         %{network: network} do
      cut = partition_and_heal(network, "part", :link)

      # The partition was noticed on both sides by the tick timeout, not at once.
      assert cut.noticed_after >= @ticktime * 1_000 * 3 / 4

      # Only OTP disconnected anyone: the strategies kept the pod DNS still listed.
      assert_healed(cut, @setuptime + 5 * @interval, @setuptime + @interval)
    end
  end

  describe "a partition that refuses" do
    # A firewall that rejects (TCP reset, ICMP unreachable) leaves no connection setup waiting
    # on a lost packet: the strategies' polls during the partition fail at once, and the first
    # poll after it connects. So the mesh is whole within one interval, plus the time of that
    # poll's lookup and connects.
    test "a pod refused for longer than net_ticktime is back in the full mesh within one interval",
         %{network: network} do
      cut = partition_and_heal(network, "refuse", :reject)

      assert_healed(cut, 5 * @interval, @interval + 250)
    end
  end

  describe "a StatefulSet pod recreated under its name" do
    # Until DNS drops the dead pod, the others' strategies may still be connecting to its old
    # address, which no one holds any more. While such a connection setup is pending (until
    # ARP gives up, or net_setuptime), a node whose name sorts after the pod's turns away the
    # pod's own connect: OTP's handshake keeps the pending one. So the pod rejoins once those
    # setups have ended, and the next poll after that connects it.
    @setuptime 7_000

    test "rejoins at its new address, and nobody else is disconnected", %{network: network} do
      cluster = cluster!(network, "sts")
      started = now()
      {cluster, [_, pod, _]} = NetnsCluster.add_pods(cluster, 3)
      assert_mesh(cluster, 5 * @interval, started)

      restarted_at = now()
      {cluster, again} = NetnsCluster.restart_pod(cluster, pod)

      # The same node name, a new VM at a new address, as a recreated StatefulSet pod gets.
      assert again.name == pod.name
      assert again.ip != pod.ip
      ready = Pod.info(again).ready_at

      # Measured from when it runs again, as a new pod's join is.
      assert_mesh(cluster, max(ready + @setuptime + 2 * @interval - now(), 0), restarted_at)

      # Only the pod that died was ever dropped.
      for other <- NetnsCluster.pods(cluster), other.name != pod.name do
        lost =
          for {label, node, _} <- NetnsCluster.lost_links(cluster, restarted_at),
              label == other.label,
              node != pod.name,
              do: node

        assert lost == [], NetnsCluster.timeline(cluster, restarted_at)
      end
    end
  end

  describe "DNS packet loss" do
    test "with 30 % of DNS datagrams dropped, the mesh stays whole and no pod disconnects", %{
      network: network
    } do
      cluster = cluster!(network, "lossy")
      {cluster, pods} = NetnsCluster.add_pods(cluster, 4)
      assert_mesh(cluster, 5 * @interval, now())

      Network.drop_dns(network, 30)
      lossy_since = now()

      try do
        # Ten polls each, sampled: the mesh never breaks.
        Stream.repeatedly(fn -> Process.sleep(100) end)
        |> Stream.take_while(fn _ -> now() < lossy_since + 10 * @interval end)
        |> Enum.each(fn _ ->
          assert {:ok, _} = NetnsCluster.await_mesh(cluster, 0),
                 NetnsCluster.timeline(cluster, lossy_since)
        end)

        # The loss was real, and the strategies kept polling through it.
        assert Network.dns_dropped(network) > 0
        for pod <- pods, do: assert(lookups_listing(pod, 4, lossy_since) != [])
      after
        Network.drop_dns(network, 0)
      end

      assert_no_lost_links(cluster, lossy_since)
    end
  end

  describe "per-node caching DNS" do
    test "with caches up to 30 s stale, no pod disconnects a live listed pod", %{network: network} do
      # Two nodes, each with its own cache in front of the cluster DNS, as NodeLocal DNSCache
      # would be; pods 0 and 1 run on node a, pods 2 and 3 on node b.
      cache_a = Network.start_cache!(network, cache_ttl: 30)
      cache_b = Network.start_cache!(network, cache_ttl: 30)
      on_node = fn cache -> [nameserver: List.to_string(:inet.ntoa(cache.ip))] end

      cluster = cluster!(network, "cached")
      started = now()
      {cluster, [doomed, a1]} = NetnsCluster.add_pods(cluster, 2, on_node.(cache_a))
      {cluster, [b2, b3]} = NetnsCluster.add_pods(cluster, 2, on_node.(cache_b))
      assert_mesh(cluster, 5 * @interval, started)

      # Node a's cache takes the answer afresh now, and keeps it for the next 30 s.
      DNS.pause(cache_a)
      DNS.resume(cache_a)
      flushed_at = now()

      assert eventually(
               fn -> lookups_listing(a1, 4, flushed_at) != [] end,
               flushed_at + 3 * @interval
             )

      Process.sleep(@interval)

      # A new pod starts on node b and a pod dies; node b's cache happens to take the change
      # at once, node a's serves the old answer until it expires.
      {cluster, [b4]} = NetnsCluster.add_pods(cluster, 1, on_node.(cache_b))
      cluster = NetnsCluster.kill_pod(cluster, doomed)
      changed_at = now()
      DNS.pause(cache_b)
      DNS.resume(cache_b)

      name = "cached.default.svc.cluster.local"
      {:ok, stale} = DNS.dig(cache_a, name, "SRV")
      {:ok, fresh} = DNS.dig(cache_b, name, "SRV")
      assert Enum.any?(stale, &(&1 =~ doomed.label)) and not Enum.any?(stale, &(&1 =~ b4.label))
      assert Enum.any?(fresh, &(&1 =~ b4.label)) and not Enum.any?(fresh, &(&1 =~ doomed.label))

      # Through the whole stale window, and one interval more: nobody live is disconnected.
      Process.sleep(max(changed_at + 30_000 + 2 * @interval - now(), 0))
      assert_no_lost_links(cluster, changed_at)
      assert_mesh(cluster, 0, changed_at)

      # The views really differed: node a's pod kept trying the dead pod it was still shown,
      # node b's pods never did, and node a's cache let it go in the end.
      tried = fn pod ->
        for {at, node, :start} <- Pod.info(pod).connects,
            node == doomed.name,
            at > changed_at + @interval,
            do: at
      end

      assert tried.(a1) != [], NetnsCluster.timeline(cluster, changed_at)
      assert tried.(b2) == [] and tried.(b3) == [] and tried.(b4) == []
      assert Enum.all?(tried.(a1), &(&1 <= changed_at + 30_000 + @interval))
    end
  end
end
