defmodule ClusterSRV.Integration.NetnsAddressTest do
  # Pods named app@<pod IP>, found by the A (or AAAA) records of their headless service, as
  # libcluster's Kubernetes.DNS and Phoenix's dns_cluster find them, in pods of the namespace
  # cluster: each pod has its own address, epmd and resolv.conf, and the strategy asks the
  # cluster DNS through it. The IPv6 pods hold a ULA address on their veth, run distribution
  # over inet6_tcp, and are named after that address as :inet.ntoa/1 writes it.
  use ClusterSRV.Harness.NetnsCase, interval: 500, app: "app"

  @moduletag timeout: 300_000

  alias ClusterSRV.Harness.{NetnsCluster, Pod}

  defp assert_mesh(cluster), do: assert_mesh(cluster, 10 * @interval, now() - 20_000)

  # What the pod's own strategy found, by asking its resolv.conf's nameserver.
  defp listed(cluster, pod) do
    %{listed: _} = status = NetnsCluster.rpc(cluster, pod, ClusterSRV, :status, [:k8s])
    status
  end

  test "libcluster's Kubernetes.DNS config (service, namespace, application_name, dns_rr_types: [:a]) meshes pods named app@<pod IP>",
       %{network: network} do
    cluster =
      cluster!(network, "web-headless",
        layout: :pod_ip,
        standalone: true,
        config: [dns_rr_types: [:a]]
      )

    {cluster, pods} = NetnsCluster.add_pods(cluster, 3)
    assert_mesh(cluster)

    names = Enum.map(pods, & &1.name)
    for pod <- pods, do: assert(pod.name == :"app@#{:inet.ntoa(pod.ip)}")

    status = listed(cluster, hd(pods))
    assert status.query == "web-headless.default.svc.cluster.local."
    assert Enum.sort(status.listed) == Enum.sort(names)

    # Each pod's own strategy found every pod by its A query, and the strategies' own connects
    # made the mesh. (A pod the others dialed before its first poll has none of its own.)
    for pod <- tl(pods) do
      assert Enum.sort(listed(cluster, pod).listed) == Enum.sort(names), pod.label
    end

    connects = for pod <- pods, {_, node, {true, _}} <- Pod.info(pod).connects, do: node
    assert length(connects) >= 2, "the strategies connected only #{inspect(connects)}"
  end

  test "IPv6 pods (ULA addresses, -proto_dist inet6_tcp), found by AAAA records, mesh as app@<IPv6>",
       %{network: network} do
    cluster =
      cluster!(network, "web6-headless",
        layout: :pod_ip,
        ip_family: :ipv6,
        erl: "-proto_dist inet6_tcp",
        standalone: true,
        config: [dns_rr_types: [:aaaa]]
      )

    {cluster, pods} = NetnsCluster.add_pods(cluster, 3)
    ms = assert_mesh(cluster)
    IO.puts("\n    3 IPv6 pods found by AAAA records meshed #{ms} ms after they ran")

    for pod <- pods do
      assert tuple_size(pod.ip) == 8
      assert pod.name == :"app@#{:inet.ntoa(pod.ip)}"
      assert Atom.to_string(pod.name) =~ ~r/^app@fd00:10:244::[0-9a-f]+$/
    end

    status = listed(cluster, hd(pods))
    assert Enum.sort(status.listed) == Enum.sort(Enum.map(pods, & &1.name))

    # A pod that leaves DNS is removed from the mesh by the others, and one that comes is met.
    [gone | _] = pods
    cluster = NetnsCluster.kill_pod(cluster, gone)
    {cluster, [_new]} = NetnsCluster.add_pods(cluster, 1)
    assert_mesh(cluster)
  end

  test "dns_cluster's own form, {ClusterSRV, query: <service>}, meshes IPv6 pods by its AAAA records",
       %{network: network} do
    # dns_cluster's defaults: the node's own basename, A, AAAA and SRV. The service has no A
    # records (IPv6 only); its SRV targets are named after the pods' IPs, so they name the same
    # nodes as the AAAA records.
    cluster =
      cluster!(network, "dc6-headless",
        layout: :pod_ip,
        ip_family: :ipv6,
        erl: "-proto_dist inet6_tcp",
        standalone: true,
        config: [query: "dc6-headless.default.svc.cluster.local"]
      )

    {cluster, pods} = NetnsCluster.add_pods(cluster, 3)
    assert_mesh(cluster)

    status = listed(cluster, hd(pods))
    assert Enum.sort(status.listed) == Enum.sort(Enum.map(pods, & &1.name))
    assert Enum.map(status.queries, & &1.type) == [:a, :aaaa]
    # The A query found nothing (an IPv6 service) and the others answered: not a failure.
    assert status.failures == 0
  end
end
