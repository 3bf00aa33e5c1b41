defmodule ClusterSRV.Integration.HostileTest do
  # Against a DNS server that misbehaves on purpose (test/support/harness/hostile_dns.ex):
  # whatever it answers, nothing crashes, nothing floods the atom table, and nothing tears the
  # cluster apart. Not async: it counts atoms, which every test's code loading moves.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  @moduletag :integration
  @moduletag :hostile

  alias ClusterSRV.Harness.{DNS, HostileDNS, Probe, Zone}
  alias ClusterSRV.{Resolver, Strategy}

  @timeout 300
  @attempts 2
  @malformed ~w(longname longlabel garbage loop tcptrunc)
  @unanswered ~w(wrongid otherq slow silent)
  @all ~w(ok many flood panic tcppartial) ++ @malformed ++ @unanswered

  setup_all do
    hostile = HostileDNS.start!()
    on_exit(fn -> HostileDNS.stop(hostile) end)

    {:ok, resolver} =
      Resolver.new(
        nameservers: [HostileDNS.nameserver(hostile)],
        timeout: @timeout,
        attempts: @attempts
      )

    %{hostile: hostile, resolver: resolver}
  end

  defp lookup_all(resolver) do
    Map.new(@all, fn kase -> {kase, Resolver.lookup(resolver, HostileDNS.name(kase))} end)
  end

  describe "ClusterSRV.Resolver.lookup/2" do
    test "gives a result for every case, within timeout x attempts", %{resolver: resolver} do
      for kase <- @all do
        {elapsed, result} = :timer.tc(fn -> Resolver.lookup(resolver, HostileDNS.name(kase)) end)

        assert div(elapsed, 1000) <= Resolver.deadline(resolver) + 200,
               "#{kase} took #{div(elapsed, 1000)} ms"

        assert match?({:ok, _}, result) or match?({:error, _}, result),
               "#{kase}: #{inspect(result)}"
      end
    end

    test "a malformed message is an error, never a crash", %{resolver: resolver} do
      for kase <- @malformed do
        assert {:error, {:io, message}} = Resolver.lookup(resolver, HostileDNS.name(kase))
        assert message =~ ~r/malformed answer|closed/, "#{kase}: #{message}"
      end
    end

    test "a wrong ID, another question, a late or a missing answer are ignored until the timeout",
         %{resolver: resolver} do
      for kase <- @unanswered do
        assert Resolver.lookup(resolver, HostileDNS.name(kase)) == {:error, :timeout}, kase
      end
    end

    test "part of a set that does not fit in one message is :answer_too_large, never a list",
         %{hostile: hostile, resolver: resolver} do
      assert Resolver.lookup(resolver, HostileDNS.name("tcppartial")) ==
               {:error, :answer_too_large}

      # On one long-lived resolver, through the fault and back.
      HostileDNS.switch(hostile, "tcppartial")
      assert Resolver.lookup(resolver, HostileDNS.name("switch")) == {:error, :answer_too_large}
      HostileDNS.switch(hostile, "ok")
      assert {:ok, [_, _, _]} = Resolver.lookup(resolver, HostileDNS.name("switch"))
    end

    test "thousands of records come over TCP, every one kept as it came", %{resolver: resolver} do
      assert {:ok, records} = Resolver.lookup(resolver, HostileDNS.name("many"))
      assert length(records) == 1_940
      # Odd bytes are kept, escaped, in binaries: "nul\\000byte...", "caf\\195\\169...".
      assert Enum.any?(records, &String.starts_with?(&1.target, "nul\\000byte"))
      assert Enum.any?(records, &String.starts_with?(&1.target, "caf\\195\\169"))
      assert Enum.all?(records, &is_binary(&1.target))
    end

    test "makes no atom from DNS data", %{resolver: resolver} do
      # Warm up: the first call of each path may load code (and its atoms).
      lookup_all(resolver)
      before = :erlang.system_info(:atom_count)
      for _ <- 1..3, do: lookup_all(resolver)
      assert :erlang.system_info(:atom_count) == before
    end
  end

  describe "addresses" do
    test "fill_addresses keeps what it found when another target never answers",
         %{resolver: resolver} do
      {elapsed, result} =
        :timer.tc(fn ->
          Resolver.lookup(resolver, HostileDNS.name("fill"), fill_addresses: true)
        end)

      assert {:ok, records} = result
      assert div(elapsed, 1000) <= Resolver.deadline(resolver, fill_addresses: true) + 200
      by_target = Map.new(records, &{&1.target, &1.addresses})
      assert by_target["ok-0.fill.hostile.test"] == [{127, 0, 0, 7}]
      assert by_target["hang-0.fill.hostile.test"] == []
    end

    test "with node_naming: :ip, only targets the rules accept are asked for addresses",
         %{hostile: hostile, resolver: resolver} do
      # The log is the server's, shared with the other tests of the `fill` case.
      before = HostileDNS.a_queries(hostile)

      ref =
        Resolver.async_discover(resolver, HostileDNS.name("fill"),
          application_name: "app",
          domain: HostileDNS.domain("fill"),
          node_naming: :ip
        )

      assert_receive {:cluster_srv_lookup, ^ref, {:ok, answer}}, 3_000
      assert answer.nodes == [:"app@127.0.0.7"]
      assert answer.unresolved == [{"hang-0.fill.hostile.test", :timeout}]

      asked = HostileDNS.a_queries(hostile) -- before
      assert "ok-0.fill.hostile.test" in asked
      # Neither the 20 invalid targets nor the 3 outside the domain were ever queried.
      refute Enum.any?(asked, &(&1 =~ ~r/^bad_|^evil/))
    end

    test "a target whose A query is never answered is unresolved with :timeout in every poll: " <>
           "neither rejected nor named after its AAAA record",
         %{resolver: resolver} do
      source = {HostileDNS.name("fill"), :srv, "app", HostileDNS.domain("fill"), :ip}

      # Poll after poll on the one long-lived resolver, as the strategy polls.
      for _ <- 1..3 do
        ref = Resolver.async_discover_all(resolver, [source], 1_000)
        assert_receive {:cluster_srv_lookup, ^ref, {:ok, [{:ok, answer}]}}, 3_000
        assert answer.nodes == [:"app@127.0.0.7"]
        assert answer.unresolved == [{"hang-0.fill.hostile.test", :timeout}]
        refute Enum.any?(answer.rejected, fn {target, _} -> target =~ "hang-0" end)
      end

      assert {:ok, [_, _, _]} = Resolver.lookup(resolver, HostileDNS.name("ok"))
    end
  end

  describe "panics" do
    test "a panic in name parsing comes back as an error, in node_names and in a discovery",
         %{resolver: resolver} do
      record = %ClusterSRV.Record{
        priority: 0,
        weight: 1,
        port: 1,
        ttl: 1,
        target: "panic.test-panic.invalid"
      }

      assert {:error, {:panic, "test panic in name parsing"}} =
               Resolver.node_names([record], application_name: "app")

      ref = Resolver.async_discover(resolver, HostileDNS.name("panic"), application_name: "app")

      assert_receive {:cluster_srv_lookup, ^ref,
                      {:error, {:panic, "test panic in name parsing"}}},
                     2_000
    end
  end

  describe "the strategy" do
    setup do
      topology = :"hostile_#{System.unique_integer([:positive])}"
      :persistent_term.put({:telemetry_stand_in, topology}, self())
      on_exit(fn -> :persistent_term.erase({:telemetry_stand_in, topology}) end)
      %{topology: topology}
    end

    defp start_strategy(hostile, topology, kase, extra \\ []) do
      probe = Probe.start!()

      state = %Cluster.Strategy.State{
        topology: topology,
        connect: Probe.mfa(probe, :connect),
        disconnect: Probe.mfa(probe, :disconnect),
        list_nodes: Probe.mfa(probe, :list_nodes),
        # The Kubernetes form, so that targets must lie under <case>.hostile.svc.test; the
        # hostile server answers by the first label.
        config:
          [
            service: kase,
            namespace: "hostile",
            cluster_domain: "test.",
            application_name: "app",
            polling_interval: 50,
            nameservers: [HostileDNS.nameserver(hostile)],
            timeout: @timeout,
            attempts: 1
          ] ++ extra
      }

      {:ok, pid} = Strategy.start_link([state])
      pid
    end

    defp await_polls(topology, count) do
      for _ <- 1..count do
        assert_receive {:telemetry, [:cluster_srv, :lookup], _, %{topology: ^topology}}, 3_000
      end
    end

    test "survives every case, keeps polling, and logs each problem once",
         %{hostile: hostile, topology: topology} do
      for kase <- @all -- ["ok"] do
        log =
          capture_log(fn ->
            pid = start_strategy(hostile, topology, kase)
            await_polls(topology, 4)
            assert Process.alive?(pid)
            GenServer.stop(pid)
          end)

        failures = Regex.scan(~r/lookup of \S+ (failed|now fails)/, log)
        rejections = Regex.scan(~r/ignoring \d+ SRV target/, log)

        case kase do
          k when k in ["many", "flood"] ->
            assert failures == [], "#{kase} failed: #{log}"

          _ ->
            assert length(failures) == 1, "#{kase} logged #{length(failures)} failures:\n#{log}"
        end

        # Each distinct reason once, however many polls saw it.
        assert length(rejections) == length(Enum.uniq(rejections)), "#{kase}:\n#{log}"
      end
    end

    test "from thousands of mostly invalid targets, only the valid ones become nodes, once",
         %{hostile: hostile, topology: topology} do
      log =
        capture_log(fn ->
          pid = start_strategy(hostile, topology, "many", max_nodes: 1_000)
          await_polls(topology, 2)
          before = :erlang.system_info(:atom_count)
          await_polls(topology, 5)
          # Invalid targets make no atom; the 20 valid ones were made at the first poll.
          assert :erlang.system_info(:atom_count) == before
          assert MapSet.size(:sys.get_state(pid).membership.meta) == 20
          GenServer.stop(pid)
        end)

      for reason <- ["not a valid host name", "not under the service's domain"] do
        assert length(Regex.scan(~r/#{Regex.escape(reason)}/, log)) == 1, "#{reason}:\n#{log}"
      end
    end

    test "fresh random names on every answer make at most max_nodes atoms per poll",
         %{hostile: hostile, topology: topology} do
      capture_log(fn ->
        pid = start_strategy(hostile, topology, "flood", max_nodes: 5)
        await_polls(topology, 2)
        before = :erlang.system_info(:atom_count)
        await_polls(topology, 10)
        grown = :erlang.system_info(:atom_count) - before
        # 20 fresh names per answer, 5 accepted: at most 5 new atoms per poll, and the cap is
        # what holds it (one more poll may land between the count and the assertion).
        assert grown <= 5 * 11, "#{grown} atoms in 10 polls"
        assert grown >= 5 * 9
        GenServer.stop(pid)
      end)
    end
  end

  describe "memory" do
    @describetag :soak
    @describetag timeout: 600_000

    # SOAK_LOOKUPS sets a longer run; make test runs the short form.
    # Against BIND, out of this VM, so that the RSS is the lookups' alone.
    test "stays flat over many lookups" do
      service =
        Zone.service("soak", "default",
          pods: for(i <- 0..2, do: {"soak-#{i}", {127, 0, 0, 10 + i}})
        )

      dns = DNS.start!(services: [service])

      try do
        {:ok, resolver} = Resolver.new(nameservers: [DNS.nameserver(dns)], timeout: 2_000)
        count = String.to_integer(System.get_env("SOAK_LOOKUPS", "20000"))
        name = Zone.service_name(service)

        run = fn n ->
          1..8
          |> Task.async_stream(
            fn _ ->
              for _ <- 1..div(n, 8), do: {:ok, [_, _, _]} = Resolver.lookup(resolver, name)
            end,
            timeout: :infinity
          )
          |> Stream.run()
        end

        # The native allocator grows to its working size over the first tens of thousands of
        # lookups (about 25 MB here), then holds: measure after that.
        run.(40_000)
        before = settle_rss()
        run.(count)
        grown = settle_rss() - before
        assert grown < 8 * 1024, "RSS grew by #{grown} kB over #{count} lookups"
      after
        DNS.stop(dns)
      end
    end
  end

  defp settle_rss do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    Process.sleep(200)
    [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/self/status"))
    String.to_integer(kb)
  end
end
