defmodule ClusterSRV.Integration.NetnsRolloutTest do
  # Clusters that change: a rolling update, pods DNS drops while they live (prune_grace, prune:
  # false), a pod named otherwise than DNS lists it, and waiting for the cluster. In pods of the
  # namespace cluster, as kubelet runs them.
  use ClusterSRV.Harness.NetnsCase

  @moduletag timeout: 300_000

  alias ClusterSRV.Harness.{NetnsCluster, Pod}

  describe "a rolling update" do
    # A Deployment of 5 pods, maxSurge 1 and maxUnavailable 0, behind a headless service with
    # publishNotReadyAddresses: true: each step starts a pod of the new ReplicaSet, waits until
    # it is in the mesh, then stops an old pod as Kubernetes does (SIGTERM; the pod stays
    # listed until it has exited).
    test "keeps a full mesh after every step, disconnects no live listed pod, and no leaving pod rejoins",
         %{network: network} do
      cluster = cluster!(network, "roll", layout: :deployment)
      {cluster, old} = NetnsCluster.add_pods(cluster, 5)
      assert_mesh(cluster, 5 * @interval, now())
      started = now()

      {cluster, left} =
        Enum.reduce(old, {cluster, []}, fn leaving, {cluster, left} ->
          {cluster, [_new]} = NetnsCluster.add_pods(cluster, 1, template: "7c6d5b4a3")
          assert_mesh(cluster, 3 * @interval, started)
          leaving_at = now()
          # SIGTERM, then its exit; what it reported, kept before it is removed from DNS.
          :ok = Pod.terminate(leaving)
          info = Pod.info(leaving)
          refute info.alive, "#{leaving.label} did not exit on SIGTERM"
          cluster = NetnsCluster.kill_pod(cluster, leaving)
          assert_mesh(cluster, 3 * @interval, started)
          {cluster, [{leaving, leaving_at, info} | left]}
        end)

      took = now() - started
      IO.puts("\n    a rolling update of 5 pods (maxSurge 1, maxUnavailable 0) took #{took} ms")

      live = NetnsCluster.pods(cluster)
      histories = Map.new(live, &{&1.name, Pod.info(&1).history})

      histories =
        Enum.reduce(left, histories, fn {pod, _, info}, h ->
          Map.put(h, pod.name, info.history)
        end)

      leaving_since = Map.new(left, fn {pod, at, _info} -> {pod.name, at} end)

      # No pod lost a link to another while neither was leaving.
      lost =
        for {name, history} <- histories,
            {{_, before}, {at, members}} <- Enum.zip(history, Enum.drop(history, 1)),
            at >= started,
            other <- MapSet.difference(before, members),
            not leaving?(leaving_since, name, at) and not leaving?(leaving_since, other, at),
            do: {name, other, at - started}

      assert lost == [], "live, listed pods were disconnected: #{inspect(lost)}"

      for {pod, at, info} <- left do
        # It left as a node should: with one line, by :global.disconnect/0...
        assert Enum.any?(info.log, &(&1 =~ "leaving the cluster on shutdown")), inspect(info.log)

        # ...and no one pulled it back in: once gone from a pod's view, it never came back, and
        # it connected to no one.
        for {name, history} <- histories, name != pod.name do
          seen = for {t, members} <- history, t >= at, do: MapSet.member?(members, pod.name)

          assert Enum.dedup(seen) in [[], [true], [false], [true, false]],
                 "#{pod.label} came back into #{name}'s view: #{inspect(seen)}\n" <>
                   NetnsCluster.timeline(cluster, at - 2_000)
        end

        sizes = for {t, members} <- info.history, t >= at, do: MapSet.size(members)

        assert sizes == Enum.sort(sizes, :desc),
               "#{pod.label} rejoined while leaving: #{inspect(sizes)}"
      end
    end

    defp leaving?(since, node, at), do: Map.has_key?(since, node) and at >= since[node]
  end

  describe "the removal policy" do
    test "with prune_grace: 3000, a pod DNS drops but alive stays connected 3 s, then is disconnected",
         %{network: network} do
      cluster = cluster!(network, "grace", config: [prune_grace: 3_000])
      {cluster, [a, b, c]} = NetnsCluster.add_pods(cluster, 3)
      assert_mesh(cluster, 5 * @interval, now())

      # The others may mesh with c before c's own poll has seen it listed; only a pod that was
      # listed can see itself leave.
      self_listed =
        eventually(
          fn -> NetnsCluster.rpc(cluster, c, ClusterSRV, :status, [:k8s]).self_listed == true end,
          now() + 3 * @interval
        )

      assert self_listed, NetnsCluster.timeline(cluster, now() - 5_000)

      dropped_at = now()
      NetnsCluster.unlist(cluster, c)

      # Connected for the grace: in both others' views, and no strategy disconnects it.
      Process.sleep(2_800)

      for pod <- [a, b],
          do: assert(c.name in Pod.members(pod), NetnsCluster.timeline(cluster, dropped_at))

      assert for(pod <- [a, b], {_at, ^c} <- Pod.info(pod).disconnects, do: pod) == []

      # Then disconnected, by the first answer after 3 s: within two intervals more.
      gone =
        eventually(fn -> Enum.all?([a, b], &(c.name not in Pod.members(&1))) end, now() + 2_500)

      assert gone, NetnsCluster.timeline(cluster, dropped_at)

      # It left each view no sooner than 3 s after DNS dropped it, and a strategy's disconnect
      # was the first to go (the other view may have lost it with it).
      for pod <- [a, b] do
        left_at =
          Enum.find_value(Pod.info(pod).history, fn {at, members} ->
            at > dropped_at and c.name not in members and at
          end)

        assert left_at - dropped_at >= 3_000,
               "#{pod.label} lost it after #{left_at - dropped_at} ms"
      end

      disconnects =
        for pod <- [a, b], {at, node} <- Pod.info(pod).disconnects, node == c.name, do: at

      assert [first | _] = Enum.sort(disconnects)
      assert first - dropped_at >= 3_000

      # The pod DNS dropped sees itself leaving, and pulls itself back into no one.
      assert Enum.any?(Pod.info(c).log, &(&1 =~ "is no longer listed: its pod is leaving"))
    end

    test "with prune: false, a pod DNS drops is never disconnected", %{network: network} do
      cluster = cluster!(network, "noprune", config: [prune: false])
      {cluster, [a, b, c]} = NetnsCluster.add_pods(cluster, 3)
      assert_mesh(cluster, 5 * @interval, now())
      dropped_at = now()
      NetnsCluster.unlist(cluster, c)
      Process.sleep(5 * @interval)

      for pod <- [a, b] do
        assert c.name in Pod.members(pod), NetnsCluster.timeline(cluster, dropped_at)
        assert Pod.info(pod).disconnects == []
      end
    end
  end

  describe "a pod named otherwise than DNS lists it" do
    test "warns what the others dial and why, and its status says it is not listed",
         %{network: network} do
      cluster = cluster!(network, "misnamed")
      {cluster, _} = NetnsCluster.add_pods(cluster, 2)
      # RELEASE_NODE=app@$(POD_IP), where DNS lists the pods by host name (a StatefulSet).
      {cluster, [wrong]} = NetnsCluster.add_pods(cluster, 1, node_host: :pod_ip)
      sandbox = NetnsCluster.sandbox(cluster, wrong)
      fqdn = "misnamed-2.misnamed.default.svc.cluster.local"

      warned =
        eventually(
          fn -> Enum.any?(Pod.info(wrong).log, &(&1 =~ "the other nodes dial")) end,
          now() + 10 * @interval
        )

      assert warned, Enum.join(Pod.info(wrong).log, "\n")
      [warning] = Enum.filter(Pod.info(wrong).log, &(&1 =~ "the other nodes dial"))
      assert warning =~ "this node is #{inspect(wrong.name)}"
      assert warning =~ ~s|dial "misnamed@#{fqdn}" for this pod|
      assert warning =~ "Set RELEASE_NODE=misnamed@#{fqdn}"
      assert wrong.name == :"misnamed@#{:inet.ntoa(sandbox.ip)}"

      status = NetnsCluster.rpc(cluster, wrong, ClusterSRV, :status, [:k8s])
      assert status.self_listed == false
      assert status.last_lookup.result == :ok
      assert length(status.listed) == 3
    end
  end

  describe "await" do
    test "returns once the mesh is there, and times out with the status when it is not",
         %{network: network} do
      cluster = cluster!(network, "await")
      {cluster, [first | _]} = NetnsCluster.add_pods(cluster, 3)

      assert NetnsCluster.rpc(cluster, first, ClusterSRV, :await, [
               :k8s,
               [min_nodes: 3, timeout: 10_000]
             ]) == :ok

      assert {:error, {:timeout, status}} =
               NetnsCluster.rpc(cluster, first, ClusterSRV, :await, [
                 :k8s,
                 [min_nodes: 5, timeout: 1_500]
               ])

      assert length(status.connected) == 2
      assert status.self_listed == true

      # And the live page, as `bin/app rpc` shows it inside the pod.
      {:ok, output} =
        NetnsCluster.rpc(cluster, first, Mix.Tasks.ClusterSrv.Check, :run, [["--live"]],
          output: true
        )

      assert output =~ "Topology :k8s on #{inspect(first.name)}"
      assert output =~ "connected (2)"
    end
  end
end
