defmodule ClusterSRV.Integration.ResolverTest do
  # Against a real BIND9 serving a CoreDNS-shaped zone. Not async: the long_schedule checks use
  # the VM's single system monitor.
  use ExUnit.Case, async: false

  @moduletag :integration

  alias ClusterSRV.{Record, Resolver}
  alias ClusterSRV.Harness.{DNS, Silent, Zone}

  @service Zone.service("myapp-headless", "default",
             pods: for(i <- 0..2, do: {"myapp-#{i}", {127, 0, 0, 10 + i}}),
             ports: [{"epmd", "tcp", 4370}]
           )

  @two_ports Zone.service("web", "default",
               pods: [{"web-0", {127, 0, 0, 20}}, {"web-1", {127, 0, 0, 21}}],
               ports: [{"http", "tcp", 4000}, {"epmd", "tcp", 4370}]
             )

  @big Zone.service("big-headless", "default",
         pods: for(i <- 0..499, do: {"big-#{i}", {127, 1, div(i, 250), rem(i, 250) + 1}})
       )

  setup_all do
    dns =
      DNS.start!(
        services: [@service, @two_ports, @big],
        extra: [{"plain.default.svc.cluster.local.", :a, {127, 0, 0, 1}}]
      )

    on_exit(fn -> DNS.stop(dns) end)

    {:ok, resolver} =
      Resolver.new(nameservers: [DNS.nameserver(dns)], timeout: 1_000, attempts: 2)

    %{dns: dns, resolver: resolver}
  end

  describe "answers" do
    test "a 3-record answer matches the zone field by field", %{resolver: resolver} do
      assert {:ok, records} = Resolver.lookup(resolver, Zone.service_name(@service))

      expected =
        for {label, ip} <- @service.pods do
          %Record{
            priority: 0,
            weight: 33,
            port: 4370,
            ttl: 5,
            target: "#{label}.myapp-headless.default.svc.cluster.local",
            addresses: [ip]
          }
        end

      assert records == expected
    end

    test "records agree with what dig shows for the same name", %{dns: dns, resolver: resolver} do
      name = Zone.service_name(@two_ports)
      {:ok, records} = Resolver.lookup(resolver, name)

      {output, 0} =
        System.cmd("dig", ["+short", "-p", to_string(dns.port), "@127.0.0.1", name, "SRV"])

      from_dig =
        for line <- String.split(output, "\n", trim: true) do
          [priority, weight, port, target] = String.split(line)

          {String.to_integer(priority), String.to_integer(weight), String.to_integer(port),
           String.trim_trailing(target, ".")}
        end

      ours = for r <- records, do: {r.priority, r.weight, r.port, r.target}
      assert Enum.sort(ours) == Enum.sort(from_dig)
    end

    test "every record is kept when a target has several ports", %{resolver: resolver} do
      {:ok, records} = Resolver.lookup(resolver, Zone.service_name(@two_ports))

      assert for(r <- records, do: {r.target, r.port}) == [
               {"web-0.web.default.svc.cluster.local", 4000},
               {"web-0.web.default.svc.cluster.local", 4370},
               {"web-1.web.default.svc.cluster.local", 4000},
               {"web-1.web.default.svc.cluster.local", 4370}
             ]

      assert Enum.all?(records, &(&1.weight == 25))
    end

    test "the _port._proto name answers with that port only", %{resolver: resolver} do
      {:ok, records} = Resolver.lookup(resolver, Zone.port_name(@two_ports, "http"))
      assert Enum.map(records, & &1.port) == [4000, 4000]
      assert Enum.map(records, & &1.weight) == [50, 50]
    end

    test "a 500-record answer, truncated over UDP, arrives whole over TCP",
         %{dns: dns, resolver: resolver} do
      name = Zone.service_name(@big)

      # The answer really is too large for UDP: the server sets TC when TCP is not allowed.
      {udp_only, 0} =
        System.cmd("dig", [
          "+notcp",
          "+ignore",
          "-p",
          to_string(dns.port),
          "@127.0.0.1",
          name,
          "SRV"
        ])

      assert udp_only =~ ~r/flags: qr aa tc/

      assert {:ok, records} = Resolver.lookup(resolver, name)
      assert length(records) == 500

      assert records |> Enum.map(& &1.target) |> Enum.uniq() |> length() == 500
      assert Enum.all?(records, &(&1.weight == 1 and &1.port == 4370 and &1.ttl == 5))
      assert Enum.map(records, & &1.target) == Enum.sort(Enum.map(records, & &1.target))
    end

    test "a change in DNS is seen by the next lookup: nothing is cached",
         %{dns: dns, resolver: resolver} do
      name = "cache-probe.default.svc.cluster.local."
      assert {:error, :nxdomain} = Resolver.lookup(resolver, name)

      DNS.update!(dns, ["update add #{name} 5 IN SRV 0 100 4370 x.default.svc.cluster.local."])

      assert {:ok, [%Record{target: "x.default.svc.cluster.local"}]} =
               Resolver.lookup(resolver, name)

      DNS.update!(dns, ["update delete #{name} SRV"])
      assert {:error, :nxdomain} = Resolver.lookup(resolver, name)
    end
  end

  describe "errors" do
    test "a name that does not exist is :nxdomain", %{resolver: resolver} do
      assert Resolver.lookup(resolver, "missing.default.svc.cluster.local.") ==
               {:error, :nxdomain}
    end

    test "a name with no SRV records is :no_records", %{resolver: resolver} do
      assert Resolver.lookup(resolver, "plain.default.svc.cluster.local.") ==
               {:error, :no_records}
    end

    test "a refusing server is :refused", %{resolver: resolver} do
      # BIND refuses queries for zones it does not serve, since recursion is off.
      assert Resolver.lookup(resolver, "example.com.") == {:error, :refused}
    end
  end

  describe "an answer too large for one DNS message" do
    defp statefulset(count) do
      pods = for i <- 0..(count - 1), do: {"myapp-#{i}", {10, 1, div(i, 250), rem(i, 250) + 1}}
      Zone.service("myapp-headless", "default", pods: pods)
    end

    test "is :answer_too_large, and the same resolver lists the service once it fits again" do
      dns = DNS.start!()

      try do
        {:ok, resolver} =
          Resolver.new(nameservers: [DNS.nameserver(dns)], timeout: 2_000, attempts: 2)

        DNS.put_service(dns, statefulset(1_000))
        name = Zone.service_name(statefulset(1_000))

        # BIND's own answer over TCP: NOERROR, TC, and not one record.
        {answer, 0} =
          System.cmd("dig", ["+tcp", "-p", to_string(dns.port), "@127.0.0.1", name, "SRV"])

        assert answer =~ ~r/status: NOERROR/
        assert answer =~ ~r/flags: qr aa tc/
        assert answer =~ ~r/ANSWER: 0,/

        assert Resolver.lookup(resolver, name) == {:error, :answer_too_large}

        ref =
          Resolver.async_discover_all(resolver, [{name, :srv, "myapp", nil, :hostname}], 1_000)

        assert_receive {:cluster_srv_lookup, ^ref, {:ok, [{:error, :answer_too_large}]}}, 5_000

        DNS.put_service(dns, statefulset(800))
        assert {:ok, records} = Resolver.lookup(resolver, name)
        assert length(records) == 800
      after
        DNS.stop(dns)
      end
    end
  end

  describe "a server that never answers" do
    setup do
      silent = Silent.start!(udp: true)
      on_exit(fn -> Silent.stop(silent) end)
      %{silent: silent}
    end

    test "gives :timeout within timeout x attempts, after exactly `attempts` tries",
         %{silent: silent} do
      {:ok, resolver} =
        Resolver.new(nameservers: [Silent.nameserver(silent)], timeout: 300, attempts: 3)

      {elapsed_us, result} =
        :timer.tc(fn -> Resolver.lookup(resolver, "myapp-headless.default.svc.cluster.local.") end)

      assert result == {:error, :timeout}
      elapsed = div(elapsed_us, 1000)
      assert elapsed >= 850, "gave up after #{elapsed} ms, before 3 tries of 300 ms"
      assert elapsed <= Resolver.deadline(resolver) + 300, "took #{elapsed} ms"
      assert Silent.datagrams(silent) == 3
    end

    test "never blocks a scheduler while it waits", %{silent: silent} do
      {:ok, resolver} =
        Resolver.new(nameservers: [Silent.nameserver(silent)], timeout: 200, attempts: 2)

      {events, callers} =
        with_long_schedule_monitor(fn ->
          1..20
          |> Task.async_stream(
            fn _ ->
              Resolver.lookup(resolver, "a.cluster.local.")
              self()
            end,
            max_concurrency: 20,
            timeout: 5_000
          )
          |> Enum.map(fn {:ok, caller} -> caller end)
        end)

      # Other processes of the VM (code loading, the logger) are not the lookups' doing.
      assert for({who, info} <- events, who in callers, do: info) == []
    end

    test "every server is asked at once: two silent ones cost nothing when a third answers",
         %{dns: dns, silent: silent} do
      other = Silent.start!(udp: true)

      try do
        {:ok, resolver} =
          Resolver.new(
            nameservers: [
              Silent.nameserver(silent),
              Silent.nameserver(other),
              DNS.nameserver(dns)
            ],
            timeout: 500,
            attempts: 1
          )

        {elapsed, result} =
          :timer.tc(fn -> Resolver.lookup(resolver, Zone.service_name(@service)) end)

        assert {:ok, [_, _, _]} = result
        assert div(elapsed, 1000) < 250, "took #{div(elapsed, 1000)} ms"
        # Sent before the answer came; each silent server reads its datagram a moment later.
        assert Silent.await_datagrams(silent, 1) == 1
        assert Silent.await_datagrams(other, 1) == 1
      after
        Silent.stop(other)
      end
    end

    test "a dead first server is passed over for a live second one", %{dns: dns, silent: silent} do
      {:ok, resolver} =
        Resolver.new(
          nameservers: [Silent.nameserver(silent), DNS.nameserver(dns)],
          timeout: 500,
          attempts: 2
        )

      assert {:ok, [_, _, _]} = Resolver.lookup(resolver, Zone.service_name(@service))
    end
  end

  describe "concurrency" do
    test "many concurrent lookups all get the full answer", %{resolver: resolver} do
      name = Zone.service_name(@service)
      {:ok, expected} = Resolver.lookup(resolver, name)

      results =
        1..300
        |> Task.async_stream(fn _ -> Resolver.lookup(resolver, name) end,
          max_concurrency: 100,
          timeout: 10_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert Enum.uniq(results) == [{:ok, expected}]
    end

    test "lookups of 500 records do not block schedulers either", %{resolver: resolver} do
      {events, caller} =
        with_long_schedule_monitor(fn ->
          for _ <- 1..20, do: {:ok, _} = Resolver.lookup(resolver, Zone.service_name(@big))
          self()
        end)

      assert for({who, info} <- events, who == caller, do: info) == []
    end
  end

  describe "async_lookup/2" do
    test "replies with one tagged message", %{resolver: resolver} do
      ref = Resolver.async_lookup(resolver, Zone.service_name(@service))
      assert is_reference(ref)
      assert_receive {:cluster_srv_lookup, ^ref, {:ok, [%Record{}, %Record{}, %Record{}]}}, 2_000
      refute_receive {:cluster_srv_lookup, ^ref, _}, 200
    end

    test "errors come in the same message shape", %{resolver: resolver} do
      ref = Resolver.async_lookup(resolver, "missing.default.svc.cluster.local.")
      assert_receive {:cluster_srv_lookup, ^ref, {:error, :nxdomain}}, 2_000
    end

    test "the caller stays responsive while lookups are in flight", %{resolver: resolver} do
      refs = for _ <- 1..50, do: Resolver.async_lookup(resolver, Zone.service_name(@big))
      send(self(), :ping)
      # The ping is already here; the lookups arrive later, each exactly once.
      assert_received :ping

      for ref <- refs do
        assert_receive {:cluster_srv_lookup, ^ref, {:ok, records}}, 5_000
        assert length(records) == 500
      end
    end
  end

  describe "async_discover/3" do
    test "replies with node names, rejections and the record count, not the records",
         %{dns: dns, resolver: resolver} do
      DNS.update!(dns, [
        "update add mixed.default.svc.cluster.local. 5 IN SRV 0 50 4370 ok-0.mixed.default.svc.cluster.local.",
        "update add mixed.default.svc.cluster.local. 5 IN SRV 0 50 4369 ok-0.mixed.default.svc.cluster.local.",
        "update add mixed.default.svc.cluster.local. 5 IN SRV 0 50 4370 elsewhere.example.com."
      ])

      ref =
        Resolver.async_discover(resolver, "mixed.default.svc.cluster.local.",
          application_name: "app",
          domain: "mixed.default.svc.cluster.local"
        )

      assert_receive {:cluster_srv_lookup, ^ref, {:ok, answer}}, 2_000

      assert answer == %{
               records: 3,
               nodes: [:"app@ok-0.mixed.default.svc.cluster.local"],
               rejected: [{"elsewhere.example.com", :outside_domain}],
               unresolved: [],
               by_target: [],
               tcp: false
             }
    end

    test "with node_naming: :ip, names come from the addresses", %{resolver: resolver} do
      ref =
        Resolver.async_discover(resolver, Zone.service_name(@service),
          application_name: "myapp",
          node_naming: :ip
        )

      assert_receive {:cluster_srv_lookup, ^ref, {:ok, %{nodes: nodes}}}, 2_000
      assert nodes == [:"myapp@127.0.0.10", :"myapp@127.0.0.11", :"myapp@127.0.0.12"]
    end

    test "errors come in the same message shape", %{resolver: resolver} do
      ref =
        Resolver.async_discover(resolver, "missing.default.svc.cluster.local.",
          application_name: "a"
        )

      assert_receive {:cluster_srv_lookup, ^ref, {:error, :nxdomain}}, 2_000
    end
  end

  describe "node_names/2" do
    test "60,000 targets hold no scheduler for 10 ms" do
      domain = "myapp-headless.default.svc.cluster.local"

      records =
        for i <- 1..60_000 do
          %Record{
            priority: 0,
            weight: 1,
            port: 4370,
            ttl: 5,
            target: "myapp-#{i}.#{domain}",
            addresses: [{10, 1, div(i, 250), rem(i, 250)}]
          }
        end

      opts = [application_name: "myapp", domain: domain, max_nodes: 60_000]
      # Warm up: the first call loads code and makes the atoms.
      {:ok, _} = Resolver.node_names(records, opts)

      # 10 ms: a margin above what the OS's scheduling of this busy machine may add.
      {events, {caller, result}} =
        with_long_schedule_monitor(10, fn -> {self(), Resolver.node_names(records, opts)} end)

      assert {:ok, %{nodes: nodes, rejected: []}} = result
      assert length(nodes) == 60_000
      assert for({who, info} <- events, who == caller, do: info) == []
    end
  end

  describe "nameserver forms reach the same server" do
    test "string, {ip_string, port} and {ip_tuple, port}", %{dns: dns} do
      for form <- ["127.0.0.1:#{dns.port}", {"127.0.0.1", dns.port}, {{127, 0, 0, 1}, dns.port}] do
        {:ok, resolver} = Resolver.new(nameservers: [form], timeout: 1_000)
        assert {:ok, [_, _, _]} = Resolver.lookup(resolver, Zone.service_name(@service))
      end
    end
  end

  # Runs `fun` under long_schedule monitoring (1 ms unless given) and returns the events seen,
  # with what `fun` returned. `fun` runs in a process of its own, since the VM never reports the
  # monitoring process itself, which then waits: a process is reported when it is scheduled
  # out, and one that exits in the slot it ran in may never be.
  defp with_long_schedule_monitor(ms \\ 1, fun) do
    previous = :erlang.system_monitor(self(), [{:long_schedule, ms}])

    returned =
      try do
        Task.async(fn ->
          returned = fun.()
          Process.sleep(1)
          returned
        end)
        |> Task.await(:infinity)
      after
        case previous do
          {pid, options} -> :erlang.system_monitor(pid, options)
          :undefined -> :erlang.system_monitor(:undefined)
        end
      end

    {collect_monitor_events([]), returned}
  end

  # An event is sent when its process is scheduled out, which may be after `fun`'s reply came.
  defp collect_monitor_events(acc) do
    receive do
      {:monitor, who, :long_schedule, info} -> collect_monitor_events([{who, info} | acc])
    after
      100 -> Enum.reverse(acc)
    end
  end
end
