defmodule ClusterSRVTest do
  use ExUnit.Case, async: true
  doctest ClusterSRV

  import ExUnit.CaptureLog

  @config [service: "myapp-headless", namespace: "default", application_name: "myapp"]

  test "on a node that is not distributed it logs once and returns :ignore" do
    assert Node.self() == :nonode@nohost

    log =
      capture_log(fn ->
        assert ClusterSRV.start_link(@config ++ [nameservers: ["127.0.0.1:1"]]) == :ignore
      end)

    assert log =~ "[cluster_srv:cluster_srv] the node is not distributed"
    refute log =~ "libcluster"
    assert log =~ "--name"
  end

  test "in dns_cluster's form it runs on a node that is not distributed, as dns_cluster does" do
    ClusterSRV.FakeDNSCluster.subscribe()

    log =
      capture_log(fn ->
        assert {:ok, pid} =
                 ClusterSRV.start_link(query: "app.internal", resolver: ClusterSRV.FakeDNSCluster)

        assert_receive {:fake_dns_cluster, :connect, :"fake@10.0.0.2"}, 1_000
        GenServer.stop(pid)
      end)

    assert log =~ "[cluster_srv:cluster_srv] the node is not distributed"
  end

  test "a dns_cluster resolver module: lookup/2, connect_node/1, list_nodes/0, basename/1" do
    # The fake lists 10.0.0.1 (connected already) and 10.0.0.2 for A, fd00::3 for AAAA.
    ClusterSRV.FakeDNSCluster.subscribe()

    {:ok, pid} =
      ClusterSRV.start_link(
        query: "app.internal",
        resolver: ClusterSRV.FakeDNSCluster,
        interval: 60_000,
        name: :"fake_#{System.unique_integer([:positive])}"
      )

    assert_receive {:fake_dns_cluster, :connect, :"fake@10.0.0.2"}, 1_000
    assert_receive {:fake_dns_cluster, :connect, :"fake@fd00::3"}, 1_000
    refute_receive {:fake_dns_cluster, :connect, _}, 200
    assert ClusterSRV.status(pid).queries |> Enum.map(& &1.type) == [:a, :aaaa]
  end

  test "two children that differ only in name both start, each found by its name" do
    children =
      for name <- [:first_cluster, :second_cluster] do
        {ClusterSRV,
         query: "app.internal", resolver: ClusterSRV.FakeDNSCluster, interval: 60_000, name: name}
      end

    capture_log(fn ->
      {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
      assert length(Supervisor.which_children(sup)) == 2
      assert is_map(ClusterSRV.status(:first_cluster))
      assert is_map(ClusterSRV.status(:second_cluster))
      Supervisor.stop(sup)
    end)
  end

  test "a missing :query says so" do
    error = assert_raise ArgumentError, fn -> ClusterSRV.start_link(name: :x) end
    assert error.message =~ "missing required key :query"
  end

  test "a supervisor carries on without it" do
    capture_log(fn ->
      {:ok, sup} = Supervisor.start_link([{ClusterSRV, @config}], strategy: :one_for_one)

      assert [{{ClusterSRV, :cluster_srv}, :undefined, :worker, _}] =
               Supervisor.which_children(sup)
    end)
  end

  test "a bad config raises, distributed or not, with the strategy's messages" do
    error =
      assert_raise ArgumentError, fn ->
        ClusterSRV.start_link(Keyword.delete(@config, :service))
      end

    assert error.message =~ "missing required key :service"

    error =
      assert_raise ArgumentError, fn ->
        ClusterSRV.start_link(Keyword.drop(@config, [:service, :namespace]))
      end

    assert error.message =~ "missing required key :query"

    error =
      assert_raise ArgumentError, fn ->
        ClusterSRV.start_link(@config ++ [polling_interval: -1])
      end

    assert error.message =~ "invalid value for :polling_interval"

    error =
      assert_raise ArgumentError, fn -> ClusterSRV.start_link(@config ++ [topology: "web"]) end

    assert error.message =~ "invalid value for :topology"

    error =
      assert_raise ArgumentError, fn -> ClusterSRV.start_link(@config ++ [connect: :nope]) end

    assert error.message =~ "invalid :connect"

    assert_raise ArgumentError, ~r/keyword list/, fn -> ClusterSRV.start_link(%{}) end
  end

  test "each topology has its own child id" do
    assert ClusterSRV.child_spec(@config ++ [topology: :a]).id == {ClusterSRV, :a}
    assert ClusterSRV.child_spec(@config ++ [topology: :b]).id == {ClusterSRV, :b}
    assert ClusterSRV.child_spec(@config ++ [name: MyApp.DNS]).id == {ClusterSRV, MyApp.DNS}
  end

  @tag :integration
  test "on a node with short names it warns once and runs" do
    port = ClusterSRV.Harness.DNS.free_port()
    ebin = Path.join(Mix.Project.app_path(), "ebin")

    code = """
    {:ok, pid} = ClusterSRV.start_link(service: "s", namespace: "n", application_name: "a",
                                         nameservers: ["127.0.0.1:1"], timeout: 50, attempts: 1)
    IO.puts("started: " <> inspect(Process.alive?(pid)))
    """

    {output, 0} =
      System.cmd(
        "elixir",
        [
          "--sname",
          "shorty",
          "--erl",
          "-start_epmd false -erl_epmd_port #{port}",
          "-pa",
          ebin,
          "-e",
          code
        ],
        stderr_to_stdout: true
      )

    assert output =~ "uses short names"
    assert output =~ "started: true"
  end
end
