defmodule ClusterSRV.Integration.StandaloneTest do
  # Real pods running the one-line {ClusterSRV, opts} child, without libcluster: the same
  # strategy through the same code path, so the same connects, disconnects and failures.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :e2e
  @moduletag timeout: 120_000

  alias ClusterSRV.Harness.{DNS, LocalCluster, Pod}

  @interval 1_000

  test "standalone pods mesh, drop a killed pod, and keep their mesh through a DNS outage" do
    dns = DNS.start!()

    cluster =
      LocalCluster.start!(
        dns: dns,
        service: "solo-headless",
        app: "solo",
        standalone: true,
        polling_interval: @interval,
        config: [timeout: 300, attempts: 1]
      )

    try do
      {cluster, _} = LocalCluster.add_pods(cluster, 3)
      assert {:ok, _} = LocalCluster.await_mesh(cluster, 2 * @interval)

      [doomed | _] = LocalCluster.pods(cluster)
      cluster = LocalCluster.kill_pod(cluster, doomed)
      assert {:ok, _} = LocalCluster.await_mesh(cluster, 2 * @interval)

      pods = LocalCluster.pods(cluster)
      before = Map.new(pods, &{&1.label, Pod.members(&1)})
      DNS.pause(dns)
      Process.sleep(3 * @interval)

      for pod <- pods do
        assert Pod.members(pod) == before[pod.label]
        assert Enum.any?(Pod.info(pod).log, &(&1 =~ "[cluster_srv:k8s] lookup of solo-headless"))
      end

      DNS.resume(dns)
    after
      LocalCluster.stop(cluster)
      DNS.stop(dns)
    end
  end
end
