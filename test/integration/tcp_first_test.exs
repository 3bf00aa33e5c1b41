defmodule ClusterSRV.Integration.TCPFirstTest do
  # One long-lived strategy, polling a real BIND through a proxy that counts every query by
  # transport: a service whose answer outgrew UDP costs one TCP query a poll, not a truncated
  # UDP query and a TCP one; TCP refused, the answer shrinking and growing, and a DNS restart
  # each change that, and nothing of it outlives them.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  @moduletag :integration

  alias ClusterSRV.Harness.{DNS, DNSProxy, Probe, Zone}
  alias ClusterSRV.Strategy

  @interval 200

  defp service(count) do
    pods = for i <- 0..(count - 1), do: {"big-#{i}", {127, 5, div(i, 250), rem(i, 250) + 1}}
    Zone.service("big-headless", "default", pods: pods)
  end

  setup do
    dns = DNS.start!(services: [service(100)])
    port = DNS.free_port()

    proxy = DNSProxy.start!(ip: {127, 0, 0, 1}, port: port, upstream: {{127, 0, 0, 1}, dns.port})

    on_exit(fn ->
      DNSProxy.stop(proxy)
      DNS.stop(dns)
    end)

    topology = :"tcp_first_#{System.unique_integer([:positive])}"
    :persistent_term.put({:telemetry_stand_in, topology}, self())
    on_exit(fn -> :persistent_term.erase({:telemetry_stand_in, topology}) end)
    probe = Probe.start!()

    state = %Cluster.Strategy.State{
      topology: topology,
      connect: Probe.mfa(probe, :connect),
      disconnect: Probe.mfa(probe, :disconnect),
      list_nodes: Probe.mfa(probe, :list_nodes),
      config: [
        service: "big-headless",
        namespace: "default",
        cluster_domain: "cluster.local.",
        application_name: "big",
        polling_interval: @interval,
        polling_jitter: 0,
        nameservers: ["127.0.0.1:#{port}"],
        timeout: 500,
        attempts: 1
      ]
    }

    %{dns: dns, proxy: proxy, state: state}
  end

  # The queries of the next `polls` polls that end in `result`, by transport, counted from a
  # clean slate after the poll in flight.
  defp traffic(proxy, polls, result \\ :ok) do
    await_polls(1, :any)
    DNSProxy.reset_traffic(proxy)
    await_polls(polls, result)
    %{queries: queries} = DNSProxy.traffic(proxy)
    Enum.frequencies_by(queries, fn {_at, transport} -> transport end)
  end

  defp await_polls(0, _result), do: :ok

  defp await_polls(count, result) do
    receive do
      {:telemetry, [:cluster_srv, :lookup], _, %{result: got}} ->
        case result do
          :any -> :ok
          :error -> assert match?({:error, _}, got), "a poll ended in #{inspect(got)}"
          result -> assert got == result, "a poll ended in #{inspect(got)}"
        end

        await_polls(count - 1, result)
    after
      5_000 -> flunk("no poll ended within 5 s")
    end
  end

  defp drain_probe do
    receive do
      {:probe, _, _, _} -> drain_probe()
      {:probe_job, _} -> drain_probe()
    after
      0 -> :ok
    end
  end

  defp drain do
    receive do
      {:telemetry, _, _, _} -> drain()
    after
      0 -> :ok
    end
  end

  test "a TCP-sized answer costs one TCP query a poll, through TCP refused, shrinking, " <>
         "growing and a DNS restart",
       %{dns: dns, proxy: proxy, state: state} do
    log =
      capture_log(fn ->
        {:ok, pid} = Strategy.start_link([state])
        await_polls(1, :ok)
        assert length(ClusterSRV.status(pid).listed) == 100

        # 100 pods do not fit in UDP: after the first poll, each asks over TCP only.
        assert traffic(proxy, 5) == %{tcp: 5}

        # A server that stops serving TCP: the TCP query fails and UDP is asked at once; the
        # answer still needs TCP, so those polls fail, and no node is disconnected.
        DNSProxy.tcp(proxy, :refuse)

        drain_probe()
        counts = traffic(proxy, 3, :error)
        assert counts[:udp] == 3
        refute_received {:probe, :disconnect, _, _}

        # TCP back: the next poll goes UDP, truncated, then TCP; the ones after, TCP only.
        DNSProxy.tcp(proxy, :serve)
        drain()
        await_polls(2, :ok)
        assert traffic(proxy, 4) == %{tcp: 4}

        # The answer shrinks to fit in UDP: one TCP poll sees it fits, then UDP only.
        DNS.put_service(dns, service(3))
        drain()
        await_polls(2, :ok)
        assert traffic(proxy, 4) == %{udp: 4}

        # TCP first, with TCP refused, and an answer that fits in UDP again: no poll fails.
        DNS.put_service(dns, service(100))
        drain()
        await_polls(2, :ok)
        assert traffic(proxy, 2) == %{tcp: 2}
        DNSProxy.tcp(proxy, :refuse)
        DNS.put_service(dns, service(3))
        drain()
        await_polls(3, :ok)
        DNSProxy.tcp(proxy, :serve)

        # It grows again: truncated over UDP once, then TCP first.
        DNS.put_service(dns, service(100))
        drain()
        await_polls(2, :ok)
        assert traffic(proxy, 4) == %{tcp: 4}

        # A DNS restart: polls fail meanwhile; once it is back, TCP first again.
        DNS.pause(dns)
        drain()
        await_polls(2, :any)
        DNS.resume(dns)
        drain()
        await_polls(2, :ok)
        assert traffic(proxy, 4) == %{tcp: 4}
        assert length(ClusterSRV.status(pid).listed) == 100
        GenServer.stop(pid)
      end)

    # The polls that failed with TCP refused said so, and the ones after, that they recovered.
    assert log =~ "succeeded again after"
  end
end
