defmodule ClusterSRV.Integration.FaultTest do
  # The fault matrix: after each fault ends, the next lookup of the *same* long-lived resolver
  # and the next poll of the *same* strategy succeed. A fresh resolver or strategy would hide
  # exactly the bugs this is about (a kept connection, a cache or a flag that outlives the
  # fault), so every case reuses one.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  @moduletag :integration
  @moduletag :faults

  alias ClusterSRV.Harness.{DNS, HostileDNS, Probe, Zone}
  alias ClusterSRV.{Resolver, Strategy}

  @sizes [3, 40, 500]

  defp service(name, count) do
    pods = for i <- 0..(count - 1), do: {"#{name}-#{i}", {127, 3, div(i, 250), rem(i, 250) + 1}}
    Zone.service(name, "default", pods: pods)
  end

  setup_all do
    dns = DNS.start!(services: for(size <- @sizes, do: service("size#{size}", size)))
    hostile = HostileDNS.start!()

    on_exit(fn ->
      DNS.stop(dns)
      HostileDNS.stop(hostile)
    end)

    %{dns: dns, hostile: hostile}
  end

  defp resolver(nameserver),
    do: elem(Resolver.new(nameservers: [nameserver], timeout: 300, attempts: 1), 1)

  defp name(size), do: Zone.service_name(service("size#{size}", size))

  describe "BIND restarts and stalls, on one long-lived resolver" do
    for size <- @sizes do
      test "stopped and started again, with #{size} records", %{dns: dns} do
        resolver = resolver(DNS.nameserver(dns))
        size = unquote(size)
        # Two lookups first: anything a lookup could keep is kept by now.
        for _ <- 1..2 do
          assert {:ok, records} = Resolver.lookup(resolver, name(size))
          assert length(records) == size
        end

        DNS.pause(dns)

        try do
          assert {:error, reason} = Resolver.lookup(resolver, name(size))
          assert reason in [:timeout, {:io, "connection refused"}]
        after
          DNS.resume(dns)
        end

        assert {:ok, records} = Resolver.lookup(resolver, name(size))
        assert length(records) == size
      end

      test "paused (SIGSTOP) and resumed, with #{size} records", %{dns: dns} do
        resolver = resolver(DNS.nameserver(dns))
        size = unquote(size)
        for _ <- 1..2, do: assert({:ok, _} = Resolver.lookup(resolver, name(size)))

        DNS.freeze(dns)

        try do
          assert Resolver.lookup(resolver, name(size)) == {:error, :timeout}
        after
          DNS.thaw(dns)
        end

        assert {:ok, records} = Resolver.lookup(resolver, name(size))
        assert length(records) == size
      end
    end
  end

  describe "the harness's own faults" do
    # Each named the harness ran, by the configuration it was started with.
    defp named_processes(dns) do
      for pid <- File.ls!("/proc"),
          {:ok, cmdline} <- [File.read("/proc/#{pid}/cmdline")],
          String.contains?(cmdline, Path.join(dns.dir, "named.conf")),
          File.read("/proc/#{pid}/comm") == {:ok, "named\n"},
          do: pid
    end

    defp thread_states(pid) do
      for task <- File.ls!("/proc/#{pid}/task"),
          {:ok, stat} <- [File.read("/proc/#{pid}/task/#{task}/stat")],
          do: stat |> String.split(") ", parts: 2) |> List.last() |> String.first()
    end

    test "freeze returns once every thread of named is stopped, and pause once named is gone",
         %{dns: dns} do
      assert [named] = named_processes(dns)
      DNS.freeze(dns)

      try do
        assert Enum.all?(thread_states(named), &(&1 == "T")), inspect(thread_states(named))
      after
        DNS.thaw(dns)
      end

      refute "T" in thread_states(named)
      DNS.pause(dns)

      try do
        assert named_processes(dns) == []
      after
        DNS.resume(dns)
      end

      assert [_other] = named_processes(dns)
    end
  end

  describe "odd servers, each followed by good answers, on one long-lived resolver" do
    # What each case gives; after each, the server answers well and the next lookup succeeds.
    @cases [
      # Read whole, though larger than the 1,232 bytes advertised and sent without TC.
      {"bigudp", {:records, 200}},
      # Asked again without EDNS.
      {"formerr", {:records, 3}},
      {"notimp", {:records, 3}},
      # Over TCP: closed right after the answer, late, or closing when idle.
      {"tcpclose", {:records, 3}},
      {"tcpdelay", {:records, 3}},
      {"tcpidle", {:records, 3}},
      {"tcpreset", {:error, {:io, "connection reset by the server"}}},
      {"tcptrunc", {:error, ~r/closed the TCP connection in the middle of its answer/}},
      {"many", {:records, 1_940}},
      {"servfail", {:error, :servfail}},
      {"garbage", {:error, ~r/malformed answer/}},
      {"loop", {:error, ~r/malformed answer/}},
      {"wrongid", {:error, :timeout}},
      {"otherq", {:error, :timeout}},
      {"silent", {:error, :timeout}}
    ]

    test "every case gives the answer or a clear error, and the next lookup succeeds",
         %{hostile: hostile} do
      resolver = resolver(HostileDNS.nameserver(hostile))
      name = HostileDNS.name("switch")

      for {kase, expected} <- @cases do
        HostileDNS.switch(hostile, kase)
        result = Resolver.lookup(resolver, name)

        case expected do
          {:records, count} ->
            assert {:ok, records} = result, "#{kase}: #{inspect(result)}"
            assert length(records) == count, kase

          {:error, %Regex{} = pattern} ->
            assert {:error, {:io, message}} = result, "#{kase}: #{inspect(result)}"
            assert message =~ pattern, kase

          {:error, reason} ->
            assert result == {:error, reason}, kase
        end

        # Good answers after it, over UDP and over TCP.
        for good <- ["ok", "tcpclose"] do
          HostileDNS.switch(hostile, good)
          assert {:ok, [_, _, _]} = Resolver.lookup(resolver, name), "#{good} after #{kase}"
        end
      end
    end

    test "a server that closes idle connections is asked again without trouble",
         %{hostile: hostile} do
      resolver = resolver(HostileDNS.nameserver(hostile))
      HostileDNS.switch(hostile, "tcpidle")
      assert {:ok, [_, _, _]} = Resolver.lookup(resolver, HostileDNS.name("switch"))
      # Past the server's 1 s idle limit: it has closed the connection.
      Process.sleep(1_200)
      before = HostileDNS.tcp_connections(hostile)
      assert {:ok, [_, _, _]} = Resolver.lookup(resolver, HostileDNS.name("switch"))
      # One connection per lookup that needs TCP, none kept.
      assert HostileDNS.tcp_connections(hostile) == before + 1
      HostileDNS.switch(hostile, "ok")
    end

    test "lookups that time out over TCP, many at once, leave no TCP slot taken",
         %{hostile: hostile} do
      # A resolver opens at most 8 TCP connections at once; 24 lookups whose TCP exchange never
      # ends hold them until their deadline. Then the first lookup after must not wait for a
      # slot: a leaked one would make it time out. (A long timeout, so that a loaded machine
      # cannot be mistaken for a leak.)
      {:ok, resolver} =
        Resolver.new(nameservers: [HostileDNS.nameserver(hostile)], timeout: 1_000, attempts: 1)

      name = HostileDNS.name("switch")
      HostileDNS.switch(hostile, "tcpsilent")

      results =
        1..24
        |> Task.async_stream(fn _ -> Resolver.lookup(resolver, name) end,
          max_concurrency: 24,
          timeout: 10_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert Enum.uniq(results) == [{:error, :timeout}]

      HostileDNS.switch(hostile, "tcpclose")
      {elapsed, result} = :timer.tc(fn -> Resolver.lookup(resolver, name) end)
      assert {:ok, [_, _, _]} = result
      assert elapsed < 1_000_000, "the lookup after waited #{div(elapsed, 1000)} ms"
      HostileDNS.switch(hostile, "ok")
    end
  end

  describe "one long-lived strategy" do
    @interval 300

    defp start_strategy(nameserver, config) do
      probe = Probe.start!()
      topology = :"faults_#{System.unique_integer([:positive])}"
      :persistent_term.put({:telemetry_stand_in, topology}, self())
      on_exit(fn -> :persistent_term.erase({:telemetry_stand_in, topology}) end)

      state = %Cluster.Strategy.State{
        topology: topology,
        connect: Probe.mfa(probe, :connect),
        disconnect: Probe.mfa(probe, :disconnect),
        list_nodes: Probe.mfa(probe, :list_nodes),
        config:
          [
            application_name: "app",
            polling_interval: @interval,
            nameservers: [nameserver],
            timeout: 200,
            attempts: 1
          ] ++ config
      }

      {:ok, pid} = Strategy.start_link([state])
      {pid, probe}
    end

    defp await_lookup(result, timeout \\ 3_000) do
      receive do
        {:telemetry, [:cluster_srv, :lookup], _, %{result: ^result}} -> :ok
      after
        timeout -> flunk("no lookup ended in #{inspect(result)} within #{timeout} ms")
      end
    end

    defp await_failure do
      assert_receive {:telemetry, [:cluster_srv, :lookup], _, %{result: {:error, _}}}, 3_000
    end

    defp drain_lookups do
      receive do
        {:telemetry, [:cluster_srv, :lookup], _, _} -> drain_lookups()
      after
        0 -> :ok
      end
    end

    test "with 40 listed pods, BIND restarts, then a pod is added: it is connected within two intervals",
         %{dns: dns} do
      service = service("restart40", 40)
      DNS.put_service(dns, service)
      domain = String.trim_trailing(Zone.service_name(service), ".")

      log =
        capture_log(fn ->
          {_pid, _probe} =
            start_strategy(DNS.nameserver(dns),
              service: "restart40",
              namespace: "default",
              cluster_domain: "cluster.local."
            )

          for _ <- 1..40, do: assert_receive({:probe, :connect, _, _}, 2_000)

          DNS.pause(dns)

          try do
            drain_lookups()
            for _ <- 1..2, do: await_failure()
          after
            DNS.resume(dns)
          end

          await_lookup(:ok)

          pods = service.pods ++ [{"restart40-40", {127, 3, 9, 40}}]
          DNS.put_service(dns, %{service | pods: pods})
          added = System.monotonic_time(:millisecond)
          new = :"app@restart40-40.#{domain}"
          assert_receive {:probe, :connect, ^new, at}, 2 * @interval + 500
          assert at - added <= 2 * @interval
          refute_received {:probe, :disconnect, _, _}
        end)

      # One warning per kind of failure in a row (a poll may meet BIND shutting down, then
      # gone), and one recovery line.
      kinds = Regex.scan(~r/lookup of \S+ failed: ([^;]+);/, log, capture: :all_but_first)
      assert kinds != [] and kinds == Enum.dedup(kinds), inspect(kinds)
      assert length(Regex.scan(~r/succeeded again after \d+ failed polls/, log)) == 1
    end

    test "after each odd server's case, the next poll succeeds", %{hostile: hostile} do
      capture_log(fn ->
        {_pid, _probe} =
          start_strategy(HostileDNS.nameserver(hostile), query: HostileDNS.name("switch"))

        await_lookup(:ok)

        for {kase, _} <- @cases do
          HostileDNS.switch(hostile, kase)
          drain_lookups()
          # Two polls under the case: whatever the first left behind meets the second.
          for _ <- 1..2, do: assert_receive({:telemetry, [:cluster_srv, :lookup], _, _}, 3_000)
          HostileDNS.switch(hostile, "ok")
          drain_lookups()
          # The poll in flight may still see the case; the one after it succeeds.
          assert_receive {:telemetry, [:cluster_srv, :lookup], _, _}, 3_000
          assert_receive {:telemetry, [:cluster_srv, :lookup], _, %{result: result}}, 3_000
          assert result == :ok, "the poll after #{kase}: #{inspect(result)}"
        end
      end)
    end
  end
end
