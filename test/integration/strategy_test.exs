defmodule ClusterSRV.Integration.StrategyTest do
  # The strategy with its native resolver against a real BIND. The MFAs are probes, so these
  # tests see exactly what the strategy would connect; real nodes are in test/integration/e2e.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  @moduletag :integration

  alias ClusterSRV.Harness.{DNS, Probe, Silent, Zone}
  alias ClusterSRV.Strategy

  @interval 200

  setup_all do
    dns = DNS.start!()
    on_exit(fn -> DNS.stop(dns) end)
    %{dns: dns}
  end

  defp service(name, count, opts \\ []) do
    pods = for i <- 0..(count - 1), do: {"#{name}-#{i}", {127, 0, 0, 10 + i}}
    Zone.service(name, "default", Keyword.merge([pods: pods], opts))
  end

  defp start(dns, config, opts \\ []) do
    probe = Probe.start!(opts)

    config =
      [
        namespace: "default",
        cluster_domain: "cluster.local.",
        polling_interval: @interval,
        nameservers: [DNS.nameserver(dns)],
        timeout: 500,
        attempts: 1
      ]
      |> Keyword.merge(config)

    state = %Cluster.Strategy.State{
      topology: :integration,
      connect: Probe.mfa(probe, :connect),
      disconnect: Probe.mfa(probe, :disconnect),
      list_nodes: Probe.mfa(probe, :list_nodes),
      config: config
    }

    {:ok, pid} = Strategy.start_link([state])
    {pid, probe}
  end

  defp connects(count, timeout \\ 2_000) do
    for _ <- 1..count//1 do
      assert_receive {:probe, :connect, node, _}, timeout
      node
    end
    |> Enum.sort()
  end

  test "the service form connects every pod by host name", %{dns: dns} do
    svc = service("alpha", 3)
    DNS.put_service(dns, svc)
    start(dns, service: "alpha", application_name: "alpha")

    assert connects(3) == [
             :"alpha@alpha-0.alpha.default.svc.cluster.local",
             :"alpha@alpha-1.alpha.default.svc.cluster.local",
             :"alpha@alpha-2.alpha.default.svc.cluster.local"
           ]

    refute_receive {:probe, :connect, _, _}, 2 * @interval
  end

  test "the _port._proto form asks the named port", %{dns: dns} do
    svc = service("beta", 2, ports: [{"http", "tcp", 4000}, {"discovery", "tcp", 4370}])
    DNS.put_service(dns, svc)
    start(dns, service: "beta", application_name: "beta", port_name: "discovery")

    assert connects(2) == [
             :"beta@beta-0.beta.default.svc.cluster.local",
             :"beta@beta-1.beta.default.svc.cluster.local"
           ]
  end

  test "node_naming: :ip names nodes after the addresses in the answer", %{dns: dns} do
    svc = service("gamma", 3, target: :ip)
    DNS.put_service(dns, svc)
    start(dns, service: "gamma", application_name: "gamma", node_naming: :ip)

    assert connects(3) == [:"gamma@127.0.0.10", :"gamma@127.0.0.11", :"gamma@127.0.0.12"]
  end

  test "node_naming: :ip resolves targets the answer carried no address for", %{dns: dns} do
    # BIND leaves the additional section out of a 500-record answer, so every address must be
    # looked up.
    pods = for i <- 0..499, do: {"delta-#{i}", {127, 2, div(i, 250), rem(i, 250) + 1}}
    svc = Zone.service("delta", "default", pods: pods)
    DNS.put_service(dns, svc)
    start(dns, service: "delta", application_name: "delta", node_naming: :ip, timeout: 2_000)

    nodes = connects(500, 10_000)
    assert length(Enum.uniq(nodes)) == 500
    assert :"delta@127.2.0.1" in nodes and :"delta@127.2.1.250" in nodes
  end

  test "a pod removed from DNS is disconnected", %{dns: dns} do
    svc = service("epsilon", 3)
    DNS.put_service(dns, svc)
    {pid, _probe} = start(dns, service: "epsilon", application_name: "epsilon")
    assert length(connects(3)) == 3

    DNS.put_service(dns, %{svc | pods: Enum.take(svc.pods, 2)})

    assert_receive {:probe, :disconnect, :"epsilon@epsilon-2.epsilon.default.svc.cluster.local",
                    _},
                   2_000

    refute_receive {:probe, :disconnect, _, _}, 3 * @interval
    assert MapSet.size(:sys.get_state(pid).membership.meta) == 2
  end

  test "stopping the DNS server disconnects no one", %{dns: dns} do
    svc = service("zeta", 3)
    DNS.put_service(dns, svc)

    log =
      capture_log(fn ->
        {pid, _probe} = start(dns, service: "zeta", application_name: "zeta")
        assert length(connects(3)) == 3
        Process.sleep(@interval)
        known = :sys.get_state(pid).membership.meta
        assert MapSet.size(known) == 3

        DNS.pause(dns)

        try do
          # Several polls fail. On a live host, a stopped server's port refuses the query.
          Process.sleep(3 * (@interval + 500))
          refute_received {:probe, :disconnect, _, _}
          assert :sys.get_state(pid).membership.meta == known
          assert Map.values(ClusterSRV.status(pid).failing) == [{:io, "connection refused"}]
        after
          DNS.resume(dns)
        end

        Process.sleep(2 * (@interval + 500))
        refute_received {:probe, :disconnect, _, _}
        assert ClusterSRV.status(pid).failing == %{}

        # And changes apply again once DNS is back.
        DNS.put_service(dns, %{svc | pods: Enum.take(svc.pods, 2)})
        assert_receive {:probe, :disconnect, _, _}, 2_000
      end)

    assert log =~ "lookup of zeta.default.svc.cluster.local. failed: connection refused"
    assert log =~ "succeeded again"
  end

  test "the strategy answers calls while its lookup hangs on a silent server" do
    silent = Silent.start!(udp: true)

    try do
      probe = Probe.start!()

      state = %Cluster.Strategy.State{
        topology: :silent,
        connect: Probe.mfa(probe, :connect),
        disconnect: Probe.mfa(probe, :disconnect),
        list_nodes: Probe.mfa(probe, :list_nodes),
        config: [
          service: "s",
          namespace: "default",
          application_name: "app",
          nameservers: [Silent.nameserver(silent)],
          timeout: 2_000,
          attempts: 2
        ]
      }

      capture_log(fn ->
        {:ok, pid} = Strategy.start_link([state])
        Process.sleep(100)

        for _ <- 1..5 do
          {elapsed, state} = :timer.tc(fn -> :sys.get_state(pid, 1_000) end)
          assert ClusterSRV.Lookup.running?(state.lookup)
          assert elapsed < 50_000, "a call took #{div(elapsed, 1000)} ms"
          Process.sleep(200)
        end

        assert Silent.datagrams(silent) >= 1
      end)
    after
      Silent.stop(silent)
    end
  end

  describe "partial faults, on one long-lived strategy" do
    test "node_naming: :ip: a target whose address lookup fails keeps its node; a whole answer " <>
           "without it removes it" do
      # SRV answers without addresses, so that each target's address is asked on its own.
      dns = DNS.start!(minimal_responses: true, drops: true)

      try do
        svc = service("theta", 3)
        DNS.put_service(dns, svc)
        dropped = "theta-1.theta.default.svc.cluster.local."

        log =
          capture_log(fn ->
            {pid, _probe} =
              start(dns, service: "theta", application_name: "theta", node_naming: :ip)

            assert connects(3) == [:"theta@127.0.0.10", :"theta@127.0.0.11", :"theta@127.0.0.12"]

            # theta-1's address queries time out: its node stays.
            DNS.drop(dns, dropped)
            refute_receive {:probe, :disconnect, _, _}, 6 * (@interval + 500)
            assert :"theta@127.0.0.11" in ClusterSRV.status(pid).listed

            DNS.undrop(dns, dropped)
            refute_receive {:probe, _, _, _}, 3 * (@interval + 500)

            # A whole answer without theta-2 removes theta-2, and only it.
            DNS.put_service(dns, %{svc | pods: Enum.take(svc.pods, 2)})
            assert_receive {:probe, :disconnect, :"theta@127.0.0.12", _}, 2_000
            refute_receive {:probe, :disconnect, _, _}, 3 * @interval
          end)

        assert log =~
                 "the address of 1 SRV target(s) could not be looked up " <>
                   "(for example \"theta-1.theta.default.svc.cluster.local\": no answer in time)"
      after
        DNS.stop(dns)
      end
    end

    test "an answer too large for one DNS message disconnects no one, and says once what to do",
         %{dns: dns} do
      pods = fn count ->
        for i <- 0..(count - 1), do: {"iotas-#{i}", {127, 4, div(i, 250), rem(i, 250) + 1}}
      end

      # Targets as long as a StatefulSet's `myapp-N.myapp-headless...`: 936 fit in a message.
      svc = Zone.service("iotas-headless", "default", pods: pods.(800))
      DNS.put_service(dns, svc)

      log =
        capture_log(fn ->
          {pid, _probe} =
            start(dns,
              service: "iotas-headless",
              application_name: "iota",
              timeout: 2_000,
              # The harness writes 800 pods in several updates: a poll in between may see
              # part of them, which is DNS's word, not a fault; the grace keeps that out.
              prune_grace: 60_000
            )

          assert length(connects(800, 10_000)) == 800

          # 1,000 pods' records do not fit in one DNS message (65,535 bytes).
          DNS.put_service(dns, %{svc | pods: pods.(1_000)})
          Process.sleep(4 * @interval)
          refute_received {:probe, :disconnect, _, _}
          assert ClusterSRV.status(pid).failing == %{{svc_name(svc), :srv} => :answer_too_large}
          assert length(ClusterSRV.status(pid).listed) == 800

          DNS.put_service(dns, svc)
          refute_receive {:probe, :disconnect, _, _}, 4 * @interval
          assert ClusterSRV.status(pid).failing == %{}
        end)

      assert [_once] =
               Regex.scan(~r/does not fit in one DNS message .* the service has outgrown/, log)
    end
  end

  defp svc_name(svc), do: Zone.service_name(svc)
end
