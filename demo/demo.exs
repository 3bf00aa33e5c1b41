# `make demo`: a local cluster formed from DNS SRV records.
#
# Where network namespaces are allowed (root on Linux), the pods are built as Kubernetes builds
# them: each BEAM node in its own network namespace, with its own address, host name and epmd,
# and kubelet's /etc/hosts and /etc/resolv.conf; a real BIND serves a CoreDNS-shaped
# cluster.local at 10.96.0.10:53, and the strategy has no nameservers option. Elsewhere, the
# loopback cluster: each pod on its own 127.x address, BIND on a high port. The story plays live.

defmodule Demo do
  alias ClusterSRV.Harness.{DNS, LocalCluster, Netns, Network, NetnsCluster, Pod}

  @interval 1_000
  @outage 6_000

  def run do
    # Marks what this run starts, so the end can check that it left nothing running.
    System.put_env("CLUSTER_SRV_RUN", "demo#{System.os_time()}")
    started = now()
    Process.put(:t0, started)

    {kind, reason} =
      cond do
        System.get_env("CLUSTER_SRV_DEMO") == "loopback" ->
          {:loopback, "CLUSTER_SRV_DEMO=loopback asks for it"}

        reason = Netns.unavailable_reason() ->
          {:loopback, reason}

        true ->
          {:netns, nil}
      end

    {world, dns} = start_world(kind)
    Process.put(:world, world)
    say(intro(kind, reason, dns))

    cluster = start_cluster(world, service: "myapp-headless")

    try do
      cluster = step1(cluster)
      cluster = step2(cluster)
      cluster = step3(cluster)
      cluster = step4(cluster)
      step5(cluster, dns)
      stop_cluster(cluster)
      # The first cluster's pods leaving is not part of the story.
      flush_events()
      step6(world)
    after
      stop_cluster(cluster)
      stop_world(world)
    end

    say("\nDone in #{Float.round((now() - started) / 1000, 1)} s. #{leftovers()}")
  end

  # -- The two clusters, behind one set of calls ---------------------------------------------

  defp start_world(:netns) do
    network = Network.start!()
    {{:netns, network}, Network.dns(network)}
  end

  defp start_world(:loopback) do
    dns = DNS.start!()
    {{:loopback, dns}, dns}
  end

  defp stop_world({:netns, network}), do: Network.stop(network)
  defp stop_world({:loopback, dns}), do: DNS.stop(dns)

  defp start_cluster({:netns, network}, opts) do
    NetnsCluster.start!(
      [network: network, polling_interval: @interval, subscriber: self()] ++ opts
    )
  end

  # Short DNS timeouts, so that lookups fail within the outage on loopback too.
  defp start_cluster({:loopback, dns}, opts) do
    LocalCluster.start!(
      [
        dns: dns,
        polling_interval: @interval,
        subscriber: self(),
        config: [timeout: 300, attempts: 1]
      ] ++ opts
    )
  end

  defp module(%NetnsCluster{}), do: NetnsCluster
  defp module(%LocalCluster{}), do: LocalCluster

  defp stop_cluster(cluster), do: module(cluster).stop(cluster)
  defp add_pods(cluster, n), do: module(cluster).add_pods(cluster, n)
  defp kill_pod(cluster, pod), do: module(cluster).kill_pod(cluster, pod)
  defp add_dead(cluster, n), do: module(cluster).add_dead(cluster, n)
  defp clear_dead(cluster), do: module(cluster).clear_dead(cluster)
  defp dead_nodes(cluster), do: module(cluster).dead_nodes(cluster)
  defp pods(cluster), do: module(cluster).pods(cluster)
  defp try_mesh(cluster), do: module(cluster).await_mesh(cluster, 0)

  defp intro(:netns, nil, dns) do
    """
    libcluster_srv demo: pods in network namespaces, built as Kubernetes builds them.

    A real BIND9 serves cluster.local at #{DNS.nameserver(dns)}, the DNS service address of a
    cluster network that has no way out. Every pod is a BEAM node in its own network
    namespace, with its own address on the pod network, host name, epmd on 4369, and the
    /etc/hosts and /etc/resolv.conf kubelet writes; it names itself myapp@$(hostname -f) and
    runs ClusterSRV.Strategy with this config (no nameservers: it reads its resolv.conf):

        service: "myapp-headless", namespace: "default", application_name: "myapp",
        polling_interval: #{@interval}
    """
  end

  defp intro(:loopback, reason, dns) do
    """
    libcluster_srv demo: the loopback cluster, the fallback where pods in network namespaces cannot run.
    Why: #{reason}.

    BIND9 serves cluster.local on #{DNS.nameserver(dns)}; every pod is a BEAM node on its own
    127.x address, running ClusterSRV.Strategy with this config:

        service: "myapp-headless", namespace: "default", application_name: "myapp",
        polling_interval: #{@interval}, nameservers: ["#{DNS.nameserver(dns)}"]
    """
  end

  # Checked, not assumed: the pods' VMs, BIND and the namespaces are gone.
  defp leftovers do
    pattern = "cluster_srv_[a-z]*_#{System.get_env("CLUSTER_SRV_RUN")}_"
    {left, _} = System.cmd("pgrep", ["-af", pattern])
    processes = String.split(left, "\n", trim: true)

    case Process.get(:world) do
      {:netns, _} ->
        case processes ++ Netns.leftovers() do
          [] -> "No pod VM, no named and no namespace is left."
          left -> "Still there (a bug): #{Enum.join(left, ", ")}"
        end

      {:loopback, _} ->
        case processes do
          [] -> "No pod VM and no named is left running."
          left -> "Still running (a bug): #{Enum.join(left, ", ")}"
        end
    end
  end

  defp flush_events do
    receive do
      {:pod_event, _, _, _} -> flush_events()
    after
      0 -> :ok
    end
  end

  defp step1(cluster) do
    heading(1, "Start 3 pods (a StatefulSet) and list them in DNS")
    {cluster, pods} = add_pods(cluster, 3)
    for pod <- pods, do: say("  #{pod.label} is #{pod.name} on #{:inet.ntoa(pod.ip)}")
    ready = last_ready(pods)
    if pod_view = pod_view(hd(pods)), do: say(pod_view)
    ms = await_mesh(cluster)
    table(cluster)
    proves("3 pods formed a full mesh #{ms - ready} ms after the last one started.")
    cluster
  end

  defp step2(cluster) do
    heading(2, "Scale to 5 pods")
    {cluster, pods} = add_pods(cluster, 2)
    ready = last_ready(pods)
    ms = await_mesh(cluster)
    table(cluster)
    proves("the 2 newcomers joined #{ms - ready} ms after they started.")
    cluster
  end

  defp step3(cluster) do
    heading(3, "Kill #{hd(pods(cluster)).label} and remove it from DNS")
    victim = hd(pods(cluster))
    t = now()
    cluster = kill_pod(cluster, victim)
    ms = await_mesh(cluster)
    drain_events(2 * @interval)
    table(cluster)

    still = for pod <- pods(cluster), victim.name in Pod.members(pod), do: pod.label

    proves(
      "the others dropped it within #{ms - t} ms, and no strategy brought it back (#{length(still)} pods see it)."
    )

    cluster
  end

  defp step4(cluster) do
    heading(
      4,
      "List a dead pod in DNS (it accepts connections and never answers), then add a pod"
    )

    cluster = add_dead(cluster, 1)
    [dead] = dead_nodes(cluster)
    say("  #{short(dead)} is #{dead}: a connect to it hangs for net_setuptime (7 s)")
    drain_events(@interval + 300)
    {cluster, [pod]} = add_pods(cluster, 1)
    ready = Pod.info(pod).ready_at
    ms = await_mesh(cluster)
    table(cluster)

    # Pods whose strategy started a connect to the dead pod that has not ended yet.
    pending =
      for p <- pods(cluster),
          connects = for({_, ^dead, event} <- Pod.info(p).connects, do: event),
          List.last(connects) == :start,
          do: p.label

    proves(
      "#{pod.label} joined #{ms - ready} ms after it started, while #{length(pending)} pods' " <>
        "connects to #{short(dead)} were still hanging: connects run in parallel."
    )

    clear_dead(cluster)
  end

  defp step5(cluster, dns) do
    heading(5, "Stop the DNS server for #{div(@outage, 1000)} s, then start it again")
    pods = pods(cluster)
    before = Map.new(pods, &{&1.label, Pod.members(&1)})
    DNS.pause(dns)
    say("  #{clock()} BIND stopped: every lookup now times out")
    drain_events(@outage)
    changed = for pod <- pods, Pod.members(pod) != before[pod.label], do: pod.label
    say("  #{clock()} BIND starts again")
    DNS.resume(dns)
    drain_events(2 * @interval)
    table(cluster)
    after_changed = for pod <- pods, Pod.members(pod) != before[pod.label], do: pod.label

    proves(
      "#{length(changed)} pods changed membership during the outage and " <>
        "#{length(after_changed)} after it: a failed lookup disconnects no one."
    )
  end

  defp step6(world) do
    heading(6, "The Deployment layout: _discovery._tcp with pod-name targets")
    cluster = start_cluster(world, service: "web-headless", app: "web", layout: :deployment)

    try do
      say(
        "  the strategy asks _discovery._tcp.web-headless.default.svc.cluster.local. (port_name: \"discovery\")"
      )

      {cluster, pods} = add_pods(cluster, 3)
      for pod <- pods, do: say("  #{pod.label} is #{pod.name}")
      ready = last_ready(pods)
      ms = await_mesh(cluster)
      table(cluster)

      proves(
        "3 Deployment pods named after their pods formed a mesh #{ms - ready} ms after the last started."
      )
    after
      stop_cluster(cluster)
    end
  end

  # What a pod sees from inside, in a namespace pod: its host name and kubelet's resolv.conf.
  defp pod_view(%Pod{netns: nil}), do: nil

  defp pod_view(pod) do
    in_pod = fn argv ->
      args = ["-t", Pod.info(pod).os_pid, "-n", "-m", "-u" | argv]
      {out, 0} = System.cmd("nsenter", args, stderr_to_stdout: true)
      String.trim(out)
    end

    resolv = in_pod.(~w(cat /etc/resolv.conf)) |> String.split("\n") |> Enum.join("; ")

    "  inside #{pod.label}: hostname -f is #{in_pod.(~w(hostname -f))}; /etc/resolv.conf: #{resolv}"
  end

  # -- Waiting, with live output ---------------------------------------------------------------

  defp await_mesh(cluster) do
    deadline = now() + 15_000
    await_mesh(cluster, deadline)
  end

  defp await_mesh(cluster, deadline) do
    case try_mesh(cluster) do
      {:ok, _} ->
        drain_events(0)
        now()

      {:error, members} ->
        if now() > deadline, do: raise("no full mesh: #{inspect(members)}")
        drain_events(20)
        await_mesh(cluster, deadline)
    end
  end

  defp drain_events(ms) do
    deadline = now() + ms
    drain_until(deadline)
  end

  defp drain_until(deadline) do
    receive do
      {:pod_event, label, event, at} ->
        show(label, event, at)
        drain_until(deadline)
    after
      max(deadline - now(), 0) -> :ok
    end
  end

  defp show(label, {:members, members}, at) do
    previous = Process.get({:members, label}, MapSet.new())
    Process.put({:members, label}, members)
    added = MapSet.difference(members, previous) |> Enum.map(&short/1) |> Enum.sort()
    removed = MapSet.difference(previous, members) |> Enum.map(&short/1) |> Enum.sort()
    changes = Enum.map(added, &("+" <> &1)) ++ Enum.map(removed, &("-" <> &1))
    if changes != [], do: say("  #{clock(at)} #{pad(label)} sees #{Enum.join(changes, " ")}")
  end

  defp show(label, {:connect, node}, at) do
    if String.starts_with?(short(node), "dead"),
      do: say("  #{clock(at)} #{pad(label)} strategy connects to #{short(node)} (hangs)")
  end

  defp show(label, :exited, at), do: say("  #{clock(at)} #{pad(label)} exited")

  defp show(label, {:log, line}, at) do
    if line =~ "lookup of" do
      message = line |> String.split("] ", parts: 3) |> List.last()
      say("  #{clock(at)} #{pad(label)} log: #{message}")
    end
  end

  defp show(_label, _event, _at), do: :ok

  # -- Output ------------------------------------------------------------------------------------

  defp table(cluster) do
    pods = pods(cluster)
    labels = Enum.map(pods, & &1.label)
    width = labels |> Enum.map(&String.length/1) |> Enum.max()
    say("")
    say("  " <> String.duplicate(" ", width) <> " sees: " <> Enum.map_join(pods, " ", &column/1))

    for pod <- pods do
      members = Pod.members(pod)

      cells =
        Enum.map_join(pods, " ", fn other ->
          mark =
            cond do
              other.name == pod.name -> "·"
              other.name in members -> "●"
              true -> "○"
            end

          String.pad_trailing(mark, String.length(column(other)))
        end)

      say("  " <> String.pad_trailing(pod.label, width) <> "       " <> cells)
    end
  end

  defp column(pod), do: pod.label |> String.split("-") |> List.last() |> String.slice(0, 5)

  defp heading(n, text), do: say("\n#{clock()} Step #{n}. #{text}")
  defp proves(text), do: say("\n  ✓ This proves #{text}")

  defp last_ready(pods), do: pods |> Enum.map(&Pod.info(&1).ready_at) |> Enum.max()

  defp short(node) do
    node |> Atom.to_string() |> String.split("@") |> List.last() |> String.split(".") |> hd()
  end

  defp pad(label), do: String.pad_trailing(label, 9)
  defp clock(at \\ now()), do: "[+#{:io_lib.format("~6.2f", [(at - Process.get(:t0)) / 1000])}s]"
  defp now, do: System.monotonic_time(:millisecond)
  defp say(text), do: IO.puts(text)
end

Demo.run()
