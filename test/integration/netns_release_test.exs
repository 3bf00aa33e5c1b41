defmodule ClusterSRV.Integration.NetnsReleaseTest do
  # examples/app's release in pod sandboxes, started as examples/kubernetes starts it:
  # RELEASE_COOKIE and CLUSTER_* variables, no CLUSTER_NAMESERVERS, and rel/env.sh naming the
  # node example@$(hostname -f). Nothing in the pod points at the test's DNS but resolv.conf.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :release
  @moduletag :netns
  @moduletag timeout: 600_000

  alias ClusterSRV.Harness.{ExampleRelease, Netns, Network, NetnsCluster, Pod}

  setup_all do
    bin = ExampleRelease.build!()
    network = Network.start!()

    on_exit(fn ->
      Network.stop(network)
      ExampleRelease.remove(bin)
    end)

    %{bin: bin, network: network}
  end

  test "three release pods of a StatefulSet form a full mesh, and the check passes inside a pod",
       %{bin: bin, network: network} do
    cluster =
      NetnsCluster.start!(
        network: network,
        service: "example-headless",
        app: "example",
        release: bin,
        polling_interval: 1_000
      )

    try do
      {cluster, [pod | _]} = NetnsCluster.add_pods(cluster, 3)

      case NetnsCluster.await_mesh(cluster, 30_000) do
        {:ok, _} -> :ok
        {:error, members} -> flunk("no full mesh: #{inspect(members)}")
      end

      # The README's way to run the check in a pod, where there is no Mix: the rpc client
      # takes the pod's host name from NODE_HOST, and the check asks the pod's resolv.conf.
      check =
        "Mix.Tasks.ClusterSrv.Check.run(~w(--service example-headless --namespace default " <>
          "--application-name example))"

      host = pod.name |> Atom.to_string() |> String.split("@") |> List.last()

      {output, status} =
        Netns.cmd(pod.netns, [
          "env",
          "NODE_HOST=#{host}",
          "RELEASE_COOKIE=cluster_srv",
          bin,
          "rpc",
          check
        ])

      assert status == 0, output
      assert output =~ "asking 10.96.0.10:53 (the VM's resolver settings)", output
      assert output =~ "Node names the strategy would connect to (3)", output
      assert output =~ ~s(✓ #{inspect(pod.name)}), output
      refute output =~ "✗", output
      assert Pod.info(pod).alive
    after
      NetnsCluster.stop(cluster)
    end
  end
end
