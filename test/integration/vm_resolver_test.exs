defmodule ClusterSRV.Integration.VMResolverTest do
  # libcluster's DNSSRV asks the servers the VM resolves with (through :inet_res). Given the same
  # config, with no `nameservers`, on VMs whose resolver settings come from ERL_INETRC rather
  # than /etc/resolv.conf, the strategy must ask the same servers.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :e2e
  @moduletag timeout: 60_000

  alias ClusterSRV.Harness.{DNS, LocalCluster, Pod}

  test "when the VM's resolver settings change, the same resolver asks the new servers" do
    # In a VM of its own: the VM's resolver settings are global to it.
    script = ~S"""
    alias ClusterSRV.Harness.{DNS, Zone}
    alias ClusterSRV.Resolver
    service = Zone.service("vm", "default", pods: [{"vm-0", {127, 0, 0, 10}}])
    dns = DNS.start!(services: [service])
    name = Zone.service_name(service)
    :inet_db.res_update_conf()
    for {ip, port} <- :inet_db.res_option(:nameservers), do: :inet_db.del_ns(ip, port)
    for {ip, port} <- :inet_db.res_option(:alt_nameservers), do: :inet_db.del_alt_ns(ip, port)
    # First the VM resolves with a server that is gone.
    :inet_db.add_ns({127, 0, 0, 1}, 9)
    {:ok, resolver} = Resolver.new(timeout: 200, attempts: 1)
    IO.puts("before: #{inspect(resolver.servers)} #{inspect(Resolver.lookup(resolver, name))}")
    :inet_db.del_ns({127, 0, 0, 1}, 9)
    :inet_db.add_ns({127, 0, 0, 1}, dns.port)
    resolver = Resolver.current(resolver)
    {:ok, records} = Resolver.lookup(resolver, name)
    IO.puts("after: #{inspect(resolver.servers)} #{length(records)}")
    IO.puts("again: #{Resolver.current(resolver) == resolver}")
    DNS.stop(dns)
    """

    {output, 0} =
      System.cmd("elixir", ["-pa", Path.join(Mix.Project.app_path(), "ebin"), "-e", script],
        stderr_to_stdout: true
      )

    assert output =~ ~s|before: ["127.0.0.1:9"] {:error, {:io, "connection refused"}}|
    assert output =~ ~r/after: \["127.0.0.1:\d+"\] 1/
    assert output =~ "again: true"
  end

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
