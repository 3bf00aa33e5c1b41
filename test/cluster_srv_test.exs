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

    assert log =~ "[libcluster:cluster_srv] the node is not distributed"
    assert log =~ "--name"
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
