defmodule ClusterSRV.Integration.NodeLifecycleTest do
  # What a strategy's own processes do to the VM it runs in: stopping the strategy, its
  # self-check dying, and ClusterSRV.Await under a supervisor. Each test runs in a distributed
  # VM of its own (as native_test.exs does), with real peer nodes started by OTP's :peer, all
  # on loopback addresses sharing one distribution port and no epmd, so nothing outlives it.
  use ExUnit.Case, async: true

  @moduletag :integration

  @cookie "lifecycle"

  # Runs `script` in a VM named `a@127.0.0.N`, where `nodes.(name, n)` starts a peer
  # `name@127.0.0.n` on the same port. Returns what the VM printed.
  defp run_vm(n, script) do
    port = ClusterSRV.Harness.DNS.free_port()
    ebin = Path.join(Mix.Project.app_path(), "ebin")

    prelude = """
    dist_args = fn n ->
      ~w(-start_epmd false -erl_epmd_port #{port} -setcookie #{@cookie}) ++
        ["-kernel", "inet_dist_use_interface", "{127,0,0,\#{n}}", "-pa", #{inspect(ebin)}]
    end

    start_peer = fn name, n, connection ->
      {:ok, peer, node} =
        :peer.start(%{
          name: name,
          host: ~c"127.0.0.\#{n}",
          longnames: true,
          connection: connection,
          args: Enum.map(dist_args.(n), &String.to_charlist/1)
        })

      {peer, node}
    end

    """

    {output, _status} =
      System.cmd(
        "elixir",
        [
          "--name",
          "a@127.0.0.#{n}",
          "--cookie",
          @cookie,
          "--erl",
          "-start_epmd false -erl_epmd_port #{port} -kernel inet_dist_use_interface {127,0,0,#{n}}",
          "-pa",
          ebin,
          "-e",
          prelude <> script
        ],
        stderr_to_stdout: true
      )

    output
  end

  test "stopping a strategy while the VM runs on leaves every connection as it was" do
    output =
      run_vm(81, """
      {_b, b} = start_peer.(:b, 82, 0)
      {_c, c} = start_peer.(:c, 83, 0)
      # b is this topology's; c was connected by hand.
      true = Node.connect(c)

      resolver = fn _name -> {:ok, {:hostent, ~c"x", [], :inet, 4, [{127, 0, 0, 82}]}} end

      children = [
        {ClusterSRV,
         query: {"b", "peers.test"}, resource_types: [:a], resolver: resolver,
         polling_interval: 100, topology: :lifecycle}
      ]

      {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
      :ok = ClusterSRV.await(:lifecycle, min_nodes: 2, timeout: 5_000)
      IO.puts("before: " <> inspect(Enum.sort(Node.list())))

      :ok = Supervisor.terminate_child(sup, {ClusterSRV, :lifecycle})
      Process.sleep(500)
      IO.puts("after: " <> inspect(Enum.sort(Node.list())))
      _ = {b, c}
      """)

    assert output =~ ~s|before: [:"b@127.0.0.82", :"c@127.0.0.83"]|
    assert output =~ ~s|after: [:"b@127.0.0.82", :"c@127.0.0.83"]|
    refute output =~ "leaving the cluster"
  end

  test "a self-check whose process dies is cleared, said, and run again later" do
    output =
      run_vm(84, """
      # Every answer lists another node, never this one; the 4th call of the resolver is the
      # self-check's, and it kills its own process.
      {:ok, calls} = Agent.start_link(fn -> 0 end)
      test = self()

      resolver = fn _name ->
        call = Agent.get_and_update(calls, &{&1 + 1, &1 + 1})
        send(test, {:call, call})
        if call == 4, do: Process.exit(self(), :kill)
        {:ok, {:hostent, ~c"x", [], :srv, 1, [{0, 100, 4369, ~c"other.lifecycle.test"}]}}
      end

      {:ok, pid} =
        ClusterSRV.start_link(
          query: "lifecycle.test", application_name: "a", resolver: resolver,
          polling_interval: 100, connect: {:erlang, :is_integer, []}, topology: :selfcheck
        )

      Process.sleep(1_500)
      IO.puts("self_check: " <> inspect(:sys.get_state(pid).self_check))
      IO.puts("calls: " <> inspect(Agent.get(calls, & &1)))
      """)

    assert output =~ "the check of why could not run: its process died: :killed"
    assert output =~ "self_check: nil"
    # It ran again: a warning of what the check found, after 3 more answers.
    assert output =~ ~s|this node is :"a@127.0.0.84", but DNS does not list that name|
  end

  test "ClusterSRV.Await leaves no node event in its supervisor's mailbox" do
    output =
      run_vm(85, """
      # list_nodes is slow, so node events pile up while Await asks for the status; three
      # peers DNS lists connect on their own (as OTP's global would connect them) meanwhile.
      defmodule SlowList do
        def nodes, do: Process.sleep(300) && :erlang.nodes(:connected)
      end

      peers = for n <- 86..88, do: start_peer.(:b, n, :standard_io)
      ips = [{127, 0, 0, 86}, {127, 0, 0, 87}, {127, 0, 0, 88}]
      resolver = fn _name -> {:ok, {:hostent, ~c"x", [], :inet, 4, ips}} end

      spawn(fn ->
        Process.sleep(400)
        for n <- 86..88, do: true = Node.connect(:"b@127.0.0.\#{n}")
      end)

      children = [
        {ClusterSRV,
         query: {"b", "peers.test"}, resource_types: [:a], resolver: resolver,
         polling_interval: 60_000, connect: {:erlang, :is_integer, []},
         list_nodes: {SlowList, :nodes, []}, topology: :awaiting},
        {ClusterSRV.Await, topology: :awaiting, min_nodes: 2, timeout: 10_000}
      ]

      {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
      IO.puts("mailbox: " <> inspect(Process.info(sup, :messages)))
      Process.sleep(500)
      IO.puts("nodes: " <> inspect(length(Node.list())))
      _ = peers
      """)

    assert output =~ "nodes: 3"
    assert output =~ "mailbox: {:messages, []}"
    refute output =~ "unexpected message"
  end
end
