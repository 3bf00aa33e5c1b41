defmodule ClusterSRV.Integration.VMResolverTest do
  # libcluster's DNSSRV asks the servers the VM resolves with (through :inet_res). Given the same
  # config, with no `nameservers`, on VMs whose resolver settings come from ERL_INETRC rather
  # than /etc/resolv.conf, the strategy must ask the same servers.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :e2e
  @moduletag timeout: 60_000

  alias ClusterSRV.Harness.{DNS, LocalCluster, Pod}

  test "pods whose VMs resolve through ERL_INETRC form a mesh from libcluster's exact DNSSRV config" do
    dns = DNS.start!()

    cluster = LocalCluster.start!(dns: dns, service: "inetrc-headless", nameservers: false)

    try do
      refute Keyword.has_key?(cluster.config, :nameservers)
      {cluster, pods} = LocalCluster.add_pods(cluster, 3)
      assert {:ok, _ms} = LocalCluster.await_mesh(cluster, 5_000)

      # The mesh is the strategies' own doing, not only OTP's global connecting transitively:
      # each pod made a successful connect, or was the node of one.
      links =
        for pod <- pods, {_, node, {true, _}} <- Pod.info(pod).connects, do: {pod.name, node}

      for pod <- pods do
        assert Enum.any?(links, fn {from, to} -> pod.name in [from, to] end), pod.label
      end
    after
      LocalCluster.stop(cluster)
      DNS.stop(dns)
    end
  end
end
