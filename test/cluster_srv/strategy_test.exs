defmodule ClusterSRV.StrategyTest do
  # Unit tests: DNS is a `resolver` function the test controls, and the connect, disconnect and
  # list_nodes MFAs are probes that report every call. Real DNS and real nodes are in
  # test/integration.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias ClusterSRV.Harness.Probe
  alias ClusterSRV.Strategy

  @domain "myapp-headless.default.svc.cluster.local"
  @interval 100

  defp node_name(i), do: :"myapp@myapp-#{i}.#{@domain}"
  defp target(i), do: "myapp-#{i}.#{@domain}"

  defp hostent(targets) do
    entries = for t <- targets, do: {0, 33, 4370, String.to_charlist(t)}
    {:ok, {:hostent, ~c"#{@domain}", [], :srv, length(entries), entries}}
  end

  # A DNS the test can change: the resolver function reports each query and answers with the
  # Agent's current answer, which may be a function to run.
  defp fake_dns(answer) do
    {:ok, dns} = Agent.start_link(fn -> answer end)
    test = self()

    resolver = fn query ->
      send(test, {:lookup, query, System.monotonic_time(:millisecond)})

      case Agent.get(dns, & &1) do
        fun when is_function(fun, 0) -> fun.()
        answer -> answer
      end
    end

    {dns, resolver}
  end

  defp config(resolver, extra \\ []) do
    Keyword.merge(
      [
        service: "myapp-headless",
        namespace: "default",
        application_name: "myapp",
        cluster_domain: "cluster.local.",
        polling_interval: @interval,
        resolver: resolver
      ],
      extra
    )
  end

  defp start(config, opts \\ []) do
    probe =
      Probe.start!(
        Keyword.take(opts, [:connected, :delay, :results, :disconnect_delay, :disconnect_results])
      )

    state = %Cluster.Strategy.State{
      topology: Keyword.get(opts, :topology, :test),
      connect: Probe.mfa(probe, :connect),
      disconnect: Probe.mfa(probe, :disconnect),
      list_nodes: Probe.mfa(probe, :list_nodes),
      config: config,
      meta: Keyword.get(opts, :meta)
    }

    {:ok, pid} = Strategy.start_link([state])
    {pid, probe}
  end

  defp meta(pid), do: :sys.get_state(pid).membership.meta

  # Connect jobs report back asynchronously; wait until meta settles on `expected`.
  defp await_meta(pid, expected, tries \\ 50) do
    case meta(pid) do
      ^expected ->
        expected

      other when tries == 0 ->
        flunk("meta stayed #{inspect(other)}, expected #{inspect(expected)}")

      _ ->
        Process.sleep(20)
        await_meta(pid, expected, tries - 1)
    end
  end

  defp drain(tag) do
    receive do
      {^tag, _, _} -> drain(tag) + 1
      {^tag, _, _, _} -> drain(tag) + 1
    after
      0 -> 0
    end
  end

  describe "the libcluster contract" do
    test "child_spec/1 starts start_link with the args as given" do
      assert %{id: Strategy, start: {Strategy, :start_link, [[:state]]}} =
               Strategy.child_spec([:state])
    end

    test "start_link returns at once and the first lookup follows right after" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {pid, _probe} = start(config(resolver, polling_interval: 60_000))

      # The query is exactly <service>.<namespace>.svc.<domain>, as a charlist.
      assert_receive {:lookup, ~c"myapp-headless.default.svc.cluster.local.", _}, 1_000
      assert is_pid(pid)
    end

    test "connects every listed node with the node appended to the MFA's args" do
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {pid, _probe} = start(config(resolver))

      assert_receive {:probe, :connect, node0, _}, 1_000
      assert_receive {:probe, :connect, node1, _}, 1_000
      assert Enum.sort([node0, node1]) == [node_name(0), node_name(1)]
      await_meta(pid, MapSet.new([node_name(0), node_name(1)]))
    end

    test "nodes already in list_nodes are not connected again" do
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {pid, _probe} = start(config(resolver), connected: [node_name(0)])

      assert_receive {:probe, :connect, node, _}, 1_000
      assert node == node_name(1)
      refute_receive {:probe, :connect, _, _}, 3 * @interval
      # Both are known: one was seen connected, one was connected.
      await_meta(pid, MapSet.new([node_name(0), node_name(1)]))
    end

    test "a bad state is refused with an ArgumentError" do
      {_dns, resolver} = fake_dns(hostent([]))
      probe = Probe.start!()

      base = %Cluster.Strategy.State{
        topology: :t,
        connect: Probe.mfa(probe, :connect),
        disconnect: Probe.mfa(probe, :disconnect),
        list_nodes: Probe.mfa(probe, :list_nodes),
        config: config(resolver)
      }

      assert_raise ArgumentError, ~r/invalid :meta/, fn ->
        Strategy.start_link([%{base | meta: [:a@b]}])
      end

      assert_raise ArgumentError, ~r/:connect.*NoSuch.connect\/1 is undefined/, fn ->
        Strategy.start_link([%{base | connect: {NoSuch, :connect, []}}])
      end

      assert_raise ArgumentError, ~r/expected \[%Cluster.Strategy.State{}\]/, fn ->
        Strategy.start_link(base)
      end
    end
  end

  describe "the loop" do
    test "polls once per interval: one timer chain" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {_pid, _probe} = start(config(resolver))

      assert_receive {:lookup, _, first}, 1_000
      Process.sleep(10 * @interval)
      count = drain(:lookup)

      # Two chains (libcluster's DNSSRV) would poll about 20 times here.
      assert count in 8..11, "#{count} lookups in 10 intervals after the first"
      assert is_integer(first)
    end

    test "polls come at the interval moved by up to polling_jitter of it, the first at once" do
      gaps = fn jitter ->
        {_dns, resolver} = fake_dns(hostent([target(0)]))
        started = System.monotonic_time(:millisecond)
        {pid, _probe} = start(config(resolver, polling_jitter: jitter))

        times =
          for _ <- 1..21 do
            assert_receive {:lookup, _, at}, 1_000
            at
          end

        GenServer.stop(pid)
        drain(:lookup)
        assert hd(times) - started < @interval / 2, "the first poll waited"
        times |> Enum.zip(tl(times)) |> Enum.map(fn {a, b} -> b - a end)
      end

      steady = gaps.(0)
      assert Enum.all?(steady, &(&1 >= @interval)), inspect(steady)

      spread = gaps.(0.3)
      assert Enum.all?(spread, &(&1 >= @interval * 0.7 - 5)), inspect(spread)
      # 20 draws over ±30 ms: some fall in each half of the spread.
      assert Enum.any?(spread, &(&1 < @interval - 5)), inspect(spread)
      assert Enum.any?(spread, &(&1 > @interval + 10)), inspect(spread)
    end

    test "polling_jitter is a share from 0 to 0.5" do
      {_dns, resolver} = fake_dns(hostent([]))

      for bad <- [-0.1, 0.6, :on] do
        error = assert_raise ArgumentError, fn -> start(config(resolver, polling_jitter: bad)) end
        assert error.message =~ "invalid value for :polling_jitter"
      end
    end

    test "a connect that is slow does not delay the next poll" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {_pid, _probe} = start(config(resolver), delay: 20 * @interval)

      assert_receive {:probe, :connect, _, _}, 1_000
      Process.sleep(5 * @interval)
      assert drain(:lookup) >= 4
    end

    test "answers calls while a lookup is in flight" do
      {dns, resolver} = fake_dns(hostent([target(0)]))
      {pid, _probe} = start(config(resolver, timeout: 5_000, attempts: 1))
      assert_receive {:probe, :connect, _, _}, 1_000

      Agent.update(dns, fn _ -> fn -> Process.sleep(3_000) && hostent([]) end end)
      drain(:lookup)
      # The next lookup is the one that hangs.
      assert_receive {:lookup, _, _}, 1_000

      {elapsed, state} = :timer.tc(fn -> :sys.get_state(pid, 500) end)
      assert ClusterSRV.Lookup.running?(state.lookup), "the lookup is still in flight"
      assert elapsed < 100_000
    end

    test "a resolver that never returns is given up at the deadline, and polling goes on" do
      {dns, resolver} = fake_dns(fn -> Process.sleep(:infinity) end)

      log =
        capture_log(fn ->
          {pid, _probe} = start(config(resolver, timeout: 100, attempts: 1))
          assert_receive {:lookup, _, _}, 1_000
          # The deadline is timeout * attempts plus a margin of 1 s.
          assert_receive {:lookup, _, _}, 2_500
          Agent.update(dns, fn _ -> hostent([target(0)]) end)
          assert_receive {:probe, :connect, _, _}, 3_000
          assert Process.alive?(pid)
        end)

      assert log =~ "no answer in time"
    end
  end

  describe "connects" do
    test "run concurrently: slow connects all start together" do
      targets = for i <- 0..9, do: target(i)
      {_dns, resolver} = fake_dns(hostent(targets))
      {_pid, _probe} = start(config(resolver, polling_interval: 60_000), delay: 1_000)

      starts =
        for _ <- 0..9 do
          assert_receive {:probe, :connect, _node, at}, 1_000
          at
        end

      # Ten connects of 1 s each, one at a time, would start over 9 s.
      assert Enum.max(starts) - Enum.min(starts) < 300
    end

    test "never stack on the same node while one is in flight" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {_pid, _probe} = start(config(resolver), delay: 10 * @interval)

      assert_receive {:probe, :connect, _, _}, 1_000
      # Many polls pass while the connect hangs; none starts a second connect to it.
      refute_receive {:probe, :connect, _, _}, 8 * @interval
    end

    test "a node that failed to connect is tried again on the next poll" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))

      capture_log(fn ->
        {pid, probe} = start(config(resolver), results: %{node_name(0) => false})
        assert_receive {:probe, :connect, _, _}, 1_000
        assert_receive {:probe, :connect, _, _}, 1_000
        assert meta(pid) == MapSet.new()

        Probe.put_result(probe, node_name(0), true)
        assert_receive {:probe, :connect, _, _}, 1_000
        await_meta(pid, MapSet.new([node_name(0)]))
      end)
    end

    test "an odd return or a raise is logged, counted as a failure, and crashes nothing" do
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))

      log =
        capture_log(fn ->
          {pid, _probe} =
            start(config(resolver),
              results: %{node_name(0) => {:error, :nope}, node_name(1) => :raise}
            )

          for _ <- 1..4, do: assert_receive({:probe, :connect, _, _}, 1_000)
          assert Process.alive?(pid)
          assert meta(pid) == MapSet.new()
        end)

      assert log =~ "the connect MFA returned {:error, :nope}"
      assert log =~ "the connect MFA crashed"
      # Each unreachable node is reported once at warning level, not on every poll.
      assert length(String.split(log, "returned {:error, :nope}")) == 2
    end

    test ":ignored is libcluster's 'not part of network'" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))

      log =
        capture_log(fn ->
          {pid, _probe} = start(config(resolver), results: %{node_name(0) => :ignored})
          assert_receive {:probe, :connect, _, _}, 1_000
          Process.sleep(@interval)
          assert meta(pid) == MapSet.new()
        end)

      assert log =~
               "[libcluster:test] unable to connect to #{inspect(node_name(0))}: not part of network"
    end
  end

  describe "jobs" do
    test "a disconnect that fails while a poll runs keeps its node known, and is tried again" do
      {dns, resolver} = fake_dns(hostent([target(0), target(1)]))

      capture_log(fn ->
        {pid, _probe} =
          start(config(resolver),
            disconnect_delay: 3 * @interval,
            disconnect_results: %{node_name(1) => {:error, :busy}}
          )

        await_meta(pid, MapSet.new([node_name(0), node_name(1)]))
        Agent.update(dns, fn _ -> hostent([target(0)]) end)
        assert_receive {:probe, :disconnect, node, _}, 1_000
        assert node == node_name(1)
        # Polls run while the disconnect hangs; then it fails: the node stays known...
        Process.sleep(4 * @interval)
        assert MapSet.member?(meta(pid), node_name(1))
        # ...and the next poll tries again.
        assert_receive {:probe, :disconnect, ^node, _}, 1_000
      end)
    end

    test "connects to nodes never tried all start at once, however many are listed" do
      # 100 slow connects: none waits for another to end.
      targets = for i <- 0..99, do: target(i)
      {_dns, resolver} = fake_dns(hostent(targets))
      {_pid, _probe} = start(config(resolver), delay: 50 * @interval)

      for _ <- 1..100, do: assert_receive({:probe, :connect, _, _}, 2 * @interval)
    end

    test "a queued retry to a node a newer answer dropped is not made" do
      # 40 nodes fail once; their retries take 3 intervals and fail again: 16 run, 24 wait.
      # The next answer drops the 24; when the 16 end, none of the 24 may start.
      targets = for i <- 0..39, do: target(i)
      results = Map.new(0..39, &{node_name(&1), false})
      {dns, resolver} = fake_dns(hostent(targets))

      capture_log(fn ->
        {_pid, probe} = start(config(resolver), results: results)
        for _ <- 1..40, do: assert_receive({:probe, :connect, _, _}, 1_000)
        Probe.put_delay(probe, 3 * @interval)

        retried =
          for _ <- 1..16 do
            assert_receive {:probe, :connect, node, _}, 1_000
            node
          end

        kept = for i <- 0..39, node_name(i) in retried, do: target(i)
        Agent.update(dns, fn _ -> hostent(kept) end)
        dropped = for i <- 0..39, node_name(i) not in retried, do: node_name(i)

        # Long enough for the 16 to end, be retried, and end again.
        Process.sleep(10 * @interval)

        for node <- dropped do
          refute_received {:probe, :connect, ^node, _},
                          "#{node} was connected after DNS dropped it"
        end

        # The 16 themselves were retried meanwhile: slots did free up.
        assert_received {:probe, :connect, _, _}
      end)
    end

    test "retries of failed nodes leave room: a new node connects at once behind 40 dead ones" do
      dead = for i <- 0..39, do: target(i)
      results = Map.new(0..39, &{node_name(&1), false})
      {dns, resolver} = fake_dns(hostent(dead))

      capture_log(fn ->
        {_pid, probe} = start(config(resolver), results: results)
        # Every dead node fails once, fast; from then on its connects hang, as retries.
        for _ <- 1..40, do: assert_receive({:probe, :connect, _, _}, 1_000)
        Probe.put_delay(probe, 50 * @interval)
        Process.sleep(3 * @interval)

        Agent.update(dns, fn _ -> hostent(dead ++ [target(99)]) end)
        new = node_name(99)
        # With all 32 slots held by hanging retries it would wait 5 s.
        assert_receive {:probe, :connect, ^new, _}, 3 * @interval
      end)
    end

    test "a connect that never returns is stopped at connect_timeout and tried again" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))

      log =
        capture_log(fn ->
          {_pid, _probe} = start(config(resolver, connect_timeout: 200), delay: :infinity)
          assert_receive {:probe, :connect, _, _}, 1_000
          assert_receive {:probe_job, job}, 1_000
          assert_receive {:probe, :connect, _, _}, 1_000
          refute Process.alive?(job)
        end)

      assert log =~ "did not return within connect_timeout"
    end

    test "jobs end with the strategy" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {pid, _probe} = start(config(resolver), delay: :infinity)
      assert_receive {:probe_job, job}, 1_000
      Process.unlink(pid)
      Process.exit(pid, :shutdown)
      ref = Process.monitor(job)
      assert_receive {:DOWN, ^ref, :process, ^job, _}, 1_000
    end

    test "a stray :poll message is ignored" do
      {_dns, resolver} = fake_dns(fn -> Process.sleep(200) && hostent([target(0)]) end)
      {pid, _probe} = start(config(resolver, polling_interval: 60_000))
      assert_receive {:lookup, _, _}, 1_000
      send(pid, :poll)
      send(pid, {:poll, make_ref()})
      assert_receive {:probe, :connect, _, _}, 1_000
      assert Process.alive?(pid)
      # One chain only: no second lookup in the next 300 ms.
      refute_receive {:lookup, _, _}, 300
    end
  end

  describe "disconnects" do
    test "a node a successful answer no longer lists is disconnected" do
      {dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {pid, _probe} = start(config(resolver))
      assert_receive {:probe, :connect, _, _}, 1_000
      assert_receive {:probe, :connect, _, _}, 1_000

      Agent.update(dns, fn _ -> hostent([target(0)]) end)
      assert_receive {:probe, :disconnect, node, _}, 1_000
      assert node == node_name(1)
      await_meta(pid, MapSet.new([node_name(0)]))
    end

    test "nodes in the initial meta that DNS does not list are disconnected" do
      stale = :"myapp@myapp-9.#{@domain}"
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {_pid, _probe} = start(config(resolver), meta: MapSet.new([stale]), connected: [stale])
      assert_receive {:probe, :disconnect, ^stale, _}, 1_000
    end

    test "a connected node that was never in meta is left alone" do
      other = :"other@somewhere.example"
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {_pid, _probe} = start(config(resolver), connected: [other])
      assert_receive {:probe, :connect, _, _}, 1_000
      refute_receive {:probe, :disconnect, _, _}, 3 * @interval
    end

    for {label, failure} <- [
          timeout: {:error, :timeout},
          servfail: {:error, :servfail},
          refused: {:error, :refused},
          nxdomain: {:error, :nxdomain},
          io_error: {:error, {:io, "network is unreachable"}},
          empty_answer: {:ok, {:hostent, ~c"x", [], :srv, 0, []}},
          only_invalid_targets: :invalid,
          garbage: {:ok, :garbage},
          raise: :raise
        ] do
      test "a failed lookup (#{label}) disconnects no one" do
        {dns, resolver} = fake_dns(hostent([target(0), target(1)]))

        log =
          capture_log(fn ->
            {pid, _probe} = start(config(resolver))
            assert_receive {:probe, :connect, _, _}, 1_000
            assert_receive {:probe, :connect, _, _}, 1_000
            known = await_meta(pid, MapSet.new([node_name(0), node_name(1)]))

            failure =
              case unquote(Macro.escape(failure)) do
                :invalid -> hostent(["my_app-0.#{@domain}", "evil.example.com"])
                :raise -> fn -> raise "resolver blew up" end
                other -> other
              end

            Agent.update(dns, fn _ -> failure end)
            drain(:lookup)
            for _ <- 1..4, do: assert_receive({:lookup, _, _}, 1_000)

            refute_received {:probe, :disconnect, _, _}
            assert meta(pid) == known
          end)

        # Logged once when it starts, not on every poll.
        assert length(Regex.scan(~r/lookup of \S+ (failed|now fails)/, log)) == 1
      end
    end

    test "a failure warns again when its kind changes, and once while it lasts" do
      {dns, resolver} = fake_dns(hostent([target(0)]))

      log =
        capture_log(fn ->
          {_pid, _probe} = start(config(resolver))
          assert_receive {:probe, :connect, _, _}, 1_000

          for failure <- [
                {:error, :servfail},
                {:error, :timeout},
                {:error, {:io, "connection refused"}},
                {:error, {:io, "connection reset by the server"}}
              ] do
            Agent.update(dns, fn _ -> failure end)
            drain(:lookup)
            for _ <- 1..3, do: assert_receive({:lookup, _, _}, 1_000)
          end

          Agent.update(dns, fn _ -> hostent([target(0)]) end)
          drain(:lookup)
          for _ <- 1..2, do: assert_receive({:lookup, _, _}, 1_000)
        end)

      warnings = Regex.scan(~r/lookup of \S+ failed: ([^;]+);/, log, capture: :all_but_first)

      # Two io errors with different texts are one kind: three warnings, not four.
      assert warnings == [
               ["the server answered SERVFAIL"],
               ["no answer in time"],
               ["connection refused"]
             ]

      assert length(Regex.scan(~r/succeeded again after \d+ failed polls/, log)) == 1
    end

    test "recovery after a failure is logged once, and changes resume" do
      {dns, resolver} = fake_dns(hostent([target(0), target(1)]))

      log =
        capture_log(fn ->
          {_pid, _probe} = start(config(resolver))
          assert_receive {:probe, :connect, _, _}, 1_000
          assert_receive {:probe, :connect, _, _}, 1_000
          Agent.update(dns, fn _ -> {:error, :servfail} end)
          for _ <- 1..3, do: assert_receive({:lookup, _, _}, 1_000)
          Agent.update(dns, fn _ -> hostent([target(0)]) end)
          assert_receive {:probe, :disconnect, _, _}, 1_000
        end)

      assert log =~ "the server answered SERVFAIL"
      assert log =~ ~r/succeeded again after \d+ failed polls/
    end
  end

  describe "node names" do
    test "targets are lowercased, stripped of the dot, and de-duplicated" do
      upper = String.upcase(target(0)) <> "."
      {_dns, resolver} = fake_dns(hostent([upper, target(0), target(0) <> "."]))
      {pid, _probe} = start(config(resolver))

      assert_receive {:probe, :connect, node, _}, 1_000
      assert node == node_name(0)
      refute_receive {:probe, :connect, _, _}, 2 * @interval
      await_meta(pid, MapSet.new([node_name(0)]))
    end

    test "invalid targets make no atom and are logged once per reason" do
      fresh = fn -> "x#{System.unique_integer([:positive])}" end
      {dns, resolver} = fake_dns(hostent([target(0), "a_b.#{@domain}", "#{fresh.()}.evil.test"]))

      log =
        capture_log(fn ->
          {_pid, _probe} = start(config(resolver))
          assert_receive {:probe, :connect, _, _}, 1_000

          # Other async tests make atoms meanwhile, so rather than counting them all, look
          # for these unique names in every form an atom could have been made from.
          for _ <- 1..5 do
            bad = [
              "#{fresh.()}_x.#{@domain}",
              "#{fresh.()}.evil.test",
              "#{String.duplicate("a", 64)}#{fresh.()}.#{@domain}",
              "#{fresh.()} x.#{@domain}"
            ]

            Agent.update(dns, fn _ -> hostent([target(0) | bad]) end)
            assert_receive {:lookup, _, _}, 1_000
            assert_receive {:lookup, _, _}, 1_000

            for target <- bad,
                name <- [target, String.downcase(target)],
                name <- [name, name <> "."],
                form <- [name, "myapp@" <> name] do
              refute existing_atom?(form), "an atom was made from #{inspect(form)}"
            end
          end
        end)

      assert length(Regex.scan(~r/not a valid host name/, log)) == 1
      assert length(Regex.scan(~r/not under the service's domain/, log)) == 1
    end

    test "a kind of rejected target that goes away and comes back is logged again" do
      {dns, resolver} = fake_dns(hostent([target(0), "a_b.#{@domain}"]))

      log =
        capture_log(fn ->
          {_pid, _probe} = start(config(resolver))

          for answer <- [[target(0)], [target(0), "c_d.#{@domain}"]] do
            for _ <- 1..2, do: assert_receive({:lookup, _, _}, 1_000)
            Agent.update(dns, fn _ -> hostent(answer) end)
          end

          for _ <- 1..2, do: assert_receive({:lookup, _, _}, 1_000)
        end)

      assert length(Regex.scan(~r/not a valid host name/, log)) == 2
    end

    test "at most max_nodes names are taken from one answer" do
      targets = for i <- 0..9, do: target(i)
      {_dns, resolver} = fake_dns(hostent(targets))

      log =
        capture_log(fn ->
          {pid, _probe} = start(config(resolver, max_nodes: 3))
          for _ <- 1..3, do: assert_receive({:probe, :connect, _, _}, 1_000)
          refute_receive {:probe, :connect, _, _}, 2 * @interval
          assert MapSet.size(meta(pid)) == 3
        end)

      assert log =~ "more than max_nodes (3)"
    end

    test "node_naming: :ip names nodes after the addresses" do
      {_dns, resolver} = fake_dns(hostent(["localhost"]))

      {_pid, _probe} =
        start(config(resolver, node_naming: :ip, query: "x.test.") |> drop_service())

      assert_receive {:probe, :connect, :"myapp@127.0.0.1", _}, 2_000
    end
  end

  describe "config" do
    test "a missing key fails the start with an ArgumentError, never a KeyError" do
      {_dns, resolver} = fake_dns(hostent([]))

      for key <- [:service, :namespace, :application_name] do
        error = assert_raise ArgumentError, fn -> start(Keyword.delete(config(resolver), key)) end
        assert error.message =~ "missing required key #{inspect(key)}"
        assert error.message =~ "Example:"
      end
    end

    test "a bad value names the key, the value and what is expected" do
      {_dns, resolver} = fake_dns(hostent([]))

      for {key, bad, expected} <- [
            {:polling_interval, "5s", "a positive integer of milliseconds"},
            {:service, "my_service", "one DNS label"},
            {:namespace, 42, "one DNS label"},
            {:application_name, "my app", "a node base name"},
            {:resolver, &Map.get/2, "a function of one argument"},
            {:node_naming, :fqdn, ":hostname"},
            {:max_nodes, 0, "a positive integer"},
            {:connect_timeout, 0, "a positive integer of milliseconds"},
            {:timeout, -5, "a positive integer of milliseconds"},
            {:nameservers, ["dns:53"], "is not a nameserver"},
            {:cluster_domain, "bad domain", "the cluster's DNS domain"}
          ] do
        error =
          assert_raise ArgumentError, fn -> start(Keyword.put(config(resolver), key, bad)) end

        assert error.message =~ inspect(key), "#{key}: #{error.message}"
        assert error.message =~ inspect(bad), "#{key}: #{error.message}"
        assert error.message =~ expected, "#{key}: #{error.message}"
      end
    end

    test "keys that would be ignored are refused: protocol without port_name, query with others" do
      {_dns, resolver} = fake_dns(hostent([]))

      error = assert_raise ArgumentError, fn -> start(config(resolver, protocol: "udp")) end
      assert error.message =~ ":protocol is the protocol of :port_name"

      for key <- [:cluster_domain, :protocol] do
        query_config =
          config(resolver, [{:query, "_x._tcp.example."}, {key, "x"}]) |> drop_service()

        query_config =
          if key == :cluster_domain,
            do: query_config ++ [cluster_domain: "x."],
            else: query_config

        error = assert_raise ArgumentError, fn -> start(query_config) end
        assert error.message =~ "#{inspect(key)} cannot be combined with :query"
      end
    end

    test "a bad CLUSTER_DOMAIN is refused at start, naming the variable" do
      {_dns, resolver} = fake_dns(hostent([]))
      previous = System.get_env("CLUSTER_DOMAIN")
      System.put_env("CLUSTER_DOMAIN", "bad domain")

      try do
        error =
          assert_raise ArgumentError, fn ->
            start(Keyword.delete(config(resolver), :cluster_domain))
          end

        assert error.message =~ ~s(invalid CLUSTER_DOMAIN environment variable)
        assert error.message =~ ~s("bad domain")
      after
        if previous,
          do: System.put_env("CLUSTER_DOMAIN", previous),
          else: System.delete_env("CLUSTER_DOMAIN")
      end
    end

    test ":query cannot be combined with :service" do
      {_dns, resolver} = fake_dns(hostent([]))

      error =
        assert_raise ArgumentError, fn -> start(config(resolver, query: "_x._tcp.example.")) end

      assert error.message =~ ":service cannot be combined with :query"
    end

    test "an unknown key is logged as a likely typo" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))

      log =
        capture_log(fn ->
          start(config(resolver, polling_intervall: 1_000))
          assert_receive {:lookup, _, _}, 1_000
        end)

      assert log =~ "[libcluster:test] unknown config key :polling_intervall is ignored"
    end

    test "port_name queries the _port._proto name; query asks its own name" do
      {_dns, resolver} = fake_dns(hostent([]))

      capture_log(fn ->
        start(config(resolver, port_name: "epmd"))

        assert_receive {:lookup, ~c"_epmd._tcp.myapp-headless.default.svc.cluster.local.", _},
                       1_000

        start(config(resolver, query: "_erlang._tcp.myapp.service.consul.") |> drop_service())
        assert_receive {:lookup, ~c"_erlang._tcp.myapp.service.consul.", _}, 1_000
      end)
    end

    test "CLUSTER_DOMAIN sets the domain when cluster_domain is not given" do
      {_dns, resolver} = fake_dns(hostent([]))
      previous = System.get_env("CLUSTER_DOMAIN")
      System.put_env("CLUSTER_DOMAIN", "example.internal.")

      try do
        capture_log(fn ->
          start(Keyword.delete(config(resolver), :cluster_domain))
          assert_receive {:lookup, ~c"myapp-headless.default.svc.example.internal.", _}, 1_000
        end)
      after
        if previous,
          do: System.put_env("CLUSTER_DOMAIN", previous),
          else: System.delete_env("CLUSTER_DOMAIN")
      end
    end
  end

  describe "logs" do
    test "debug lines appear only with config :libcluster, debug: true" do
      {_dns, resolver} = fake_dns(hostent([target(0)]))

      quiet =
        capture_log([level: :debug], fn ->
          start(config(resolver))
          assert_receive {:lookup, _, _}, 1_000
          assert_receive {:lookup, _, _}, 1_000
        end)

      refute quiet =~ "DNS lists"

      Application.put_env(:libcluster, :debug, true)

      try do
        loud =
          capture_log([level: :debug], fn ->
            start(config(resolver))
            assert_receive {:lookup, _, _}, 1_000
            assert_receive {:lookup, _, _}, 1_000
            Process.sleep(50)
          end)

        assert loud =~ "[libcluster:test] DNS lists 1 nodes"
      after
        Application.delete_env(:libcluster, :debug)
      end
    end
  end

  describe "telemetry" do
    setup do
      topology = :"telemetry_#{System.unique_integer([:positive])}"
      :persistent_term.put({:telemetry_stand_in, topology}, self())
      on_exit(fn -> :persistent_term.erase({:telemetry_stand_in, topology}) end)
      %{topology: topology}
    end

    test "emits libcluster's connect events and a lookup event", %{topology: topology} do
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))

      capture_log(fn ->
        start(config(resolver), topology: topology, results: %{node_name(1) => false})

        assert_receive {:telemetry, [:libcluster, :connect_node, :ok], %{duration: duration},
                        %{node: node0, topology: ^topology}},
                       1_000

        assert is_integer(duration) and node0 == node_name(0)

        assert_receive {:telemetry, [:libcluster, :connect_node, :error], measurements,
                        %{node: node1, topology: ^topology, reason: :unreachable}},
                       1_000

        assert measurements == %{} and node1 == node_name(1)

        assert_receive {:telemetry, [:cluster_srv, :lookup], %{duration: _, records: 2, nodes: 2},
                        %{topology: ^topology, result: :ok, query: "myapp-headless." <> _}},
                       1_000
      end)
    end

    test "emits disconnect and failed-lookup events", %{topology: topology} do
      {dns, resolver} = fake_dns(hostent([target(0), target(1)]))

      capture_log(fn ->
        start(config(resolver), topology: topology)
        assert_receive {:telemetry, [:libcluster, :connect_node, :ok], _, _}, 1_000
        assert_receive {:telemetry, [:libcluster, :connect_node, :ok], _, _}, 1_000

        Agent.update(dns, fn _ -> hostent([target(0)]) end)

        assert_receive {:telemetry, [:libcluster, :disconnect_node, :ok], %{duration: _},
                        %{node: node, topology: ^topology}},
                       1_000

        assert node == node_name(1)

        Agent.update(dns, fn _ -> {:error, :servfail} end)

        assert_receive {:telemetry, [:cluster_srv, :lookup], %{records: 0, nodes: 0},
                        %{result: {:error, :servfail}}},
                       1_000

        # An answer with records but no valid name is a failed poll too.
        Agent.update(dns, fn _ -> hostent(["bad_name.#{@domain}"]) end)

        assert_receive {:telemetry, [:cluster_srv, :lookup], %{records: 1, nodes: 0},
                        %{result: {:error, :no_valid_names}}},
                       1_000
      end)
    end
  end

  describe "status and await" do
    test "status/1 finds the strategy by its topology or pid, and says what it knows" do
      topology = :"status_#{System.unique_integer([:positive])}"
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {pid, _probe} = start(config(resolver), topology: topology)
      await_meta(pid, MapSet.new([node_name(0), node_name(1)]))

      status = ClusterSRV.status(topology)
      assert status == ClusterSRV.status(pid)
      assert status.query == "myapp-headless.default.svc.cluster.local."
      assert status.listed == [node_name(0), node_name(1)]
      assert status.connected == [node_name(0), node_name(1)]
      assert status.connecting == []
      assert %{result: :ok, at: %DateTime{}, duration_us: us} = status.last_lookup
      assert is_integer(us)
      assert status.failures == 0
      assert ClusterSRV.status(:no_such_topology) == {:error, :not_found}
    end

    test "unreachable nodes are listed with why" do
      topology = :"status_#{System.unique_integer([:positive])}"
      {_dns, resolver} = fake_dns(hostent([target(0)]))

      capture_log(fn ->
        {_pid, _probe} =
          start(config(resolver), topology: topology, results: %{node_name(0) => false})

        assert_receive {:probe, :connect, _, _}, 1_000
        Process.sleep(50)
        assert ClusterSRV.status(topology).unreachable == %{node_name(0) => :unreachable}
      end)
    end

    test "await/2 returns once enough nodes are connected, and times out with the status" do
      topology = :"await_#{System.unique_integer([:positive])}"
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {_pid, _probe} = start(config(resolver), topology: topology, delay: 300)

      assert {:error, {:timeout, status}} = ClusterSRV.await(topology, min_nodes: 3, timeout: 100)
      assert status.connecting == [node_name(0), node_name(1)]
      assert ClusterSRV.await(topology, min_nodes: 3, timeout: 2_000) == :ok

      assert {:error, {:timeout, %{connected: [_, _]}}} =
               ClusterSRV.await(topology, min_nodes: 4, timeout: 300)
    end

    test "await/2 names a bad option" do
      assert_raise ArgumentError, ~r/invalid value for :min_nodes.*got: 0/, fn ->
        ClusterSRV.await(:x, min_nodes: 0)
      end
    end

    test "ClusterSRV.Await holds up its supervisor until the cluster is there" do
      topology = :"await_#{System.unique_integer([:positive])}"
      {_dns, resolver} = fake_dns(hostent([target(0)]))
      {_pid, _probe} = start(config(resolver), topology: topology, delay: 200)

      {elapsed, {:ok, sup}} =
        :timer.tc(fn ->
          Supervisor.start_link(
            [{ClusterSRV.Await, topology: topology, min_nodes: 2, timeout: 2_000}],
            strategy: :one_for_one
          )
        end)

      assert elapsed >= 150_000
      assert Supervisor.which_children(sup) == []

      Process.flag(:trap_exit, true)

      assert {:error, {:shutdown, {:failed_to_start_child, _id, {:cluster_not_formed, status}}}} =
               Supervisor.start_link(
                 [{ClusterSRV.Await, topology: topology, min_nodes: 5, timeout: 100}],
                 strategy: :one_for_one
               )

      assert [_] = status.connected
    end
  end

  describe "partial faults, on one long-lived strategy" do
    # A DNS with an answer per name, which the test can change.
    defp dns_by_name(answers) do
      {:ok, dns} = Agent.start_link(fn -> answers end)
      {dns, fn query -> Agent.get(dns, &Map.fetch!(&1, List.to_string(query))) end}
    end

    defp addresses(ips), do: {:ok, {:hostent, ~c"x", [], :inet, 4, ips}}

    # Two names asked for A records, as dns_cluster's form with a basename, removing nodes DNS
    # drops (dns_cluster's form never does by default).
    defp two_names(resolver) do
      [
        query: [{"myapp", "first.test"}, {"myapp", "second.test"}],
        resource_types: [:a],
        prune: true,
        polling_interval: @interval,
        resolver: resolver
      ]
    end

    test "a name that answers NXDOMAIN drops the nodes only it listed, and keeps them dropped" do
      {dns, resolver} =
        dns_by_name(%{
          "first.test" => addresses([{10, 0, 0, 1}]),
          "second.test" => addresses([{10, 0, 0, 2}])
        })

      {pid, probe} = start(two_names(resolver))
      await_meta(pid, MapSet.new([:"myapp@10.0.0.1", :"myapp@10.0.0.2"]))
      assert drain(:probe) == 2

      Agent.update(dns, &Map.put(&1, "second.test", {:error, :nxdomain}))
      assert_receive {:probe, :disconnect, :"myapp@10.0.0.2", _}, 1_000
      Probe.set_connected(probe, [:"myapp@10.0.0.1"])
      await_meta(pid, MapSet.new([:"myapp@10.0.0.1"]))

      # Polls go on answering so: the node is not listed, nor connected again.
      refute_receive {:probe, :connect, _, _}, 3 * @interval
      assert ClusterSRV.status(pid).listed == [:"myapp@10.0.0.1"]
    end

    test "a name that keeps failing keeps its nodes for a bounded time only" do
      {dns, resolver} =
        dns_by_name(%{
          "first.test" => addresses([{10, 0, 0, 1}]),
          "second.test" => addresses([{10, 0, 0, 2}])
        })

      {pid, _probe} = start(two_names(resolver))
      await_meta(pid, MapSet.new([:"myapp@10.0.0.1", :"myapp@10.0.0.2"]))

      log =
        capture_log(fn ->
          Agent.update(dns, &Map.put(&1, "second.test", {:error, :servfail}))
          # It is kept while the grace (10 intervals) runs, then disconnected.
          refute_receive {:probe, :disconnect, _, _}, 8 * @interval
          assert_receive {:probe, :disconnect, :"myapp@10.0.0.2", _}, 6 * @interval
        end)

      assert log =~
               "lookup of second.test (A) failed: the server answered SERVFAIL; keeping " <>
                 "the 1 nodes it listed for up to #{10 * @interval} ms"

      assert log =~ "no longer keeps 1 node(s)"
      assert ClusterSRV.status(pid).failing == %{{"second.test", :a} => :servfail}
    end

    test "a peer that says it is leaving while still connected is not connected again" do
      peer = node_name(1)
      {_dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {pid, probe} = start(config(resolver), connected: [node_name(0), peer])
      await_meta(pid, MapSet.new([node_name(0), peer]))

      # The word comes before the peer has disconnected; polls land meanwhile.
      send(pid, {:cluster_srv_leaving, peer})
      Process.sleep(2 * @interval)
      Probe.set_connected(probe, [node_name(0)])

      # DNS still lists it (a terminating pod stays listed): no connect.
      refute_receive {:probe, :connect, ^peer, _}, 5 * @interval
    end
  end

  describe "removal policy" do
    test "with prune_grace, a node DNS dropped stays connected that long, then is disconnected" do
      topology = :"prune_#{System.unique_integer([:positive])}"
      {dns, resolver} = fake_dns(hostent([target(0), target(1)]))

      capture_log(fn ->
        {pid, _probe} = start(config(resolver, prune_grace: 600), topology: topology)
        await_meta(pid, MapSet.new([node_name(0), node_name(1)]))
        Agent.update(dns, fn _ -> hostent([target(0)]) end)
        dropped = node_name(1)
        started = System.monotonic_time(:millisecond)
        Process.sleep(2 * @interval)
        assert %{^dropped => _due} = ClusterSRV.status(topology).pending_removals
        assert_receive {:probe, :disconnect, ^dropped, at}, 2_000
        assert at - started >= 600
        assert ClusterSRV.status(topology).pending_removals == %{}
      end)
    end

    test "with prune: false, a node DNS dropped is never disconnected" do
      {dns, resolver} = fake_dns(hostent([target(0), target(1)]))
      {pid, _probe} = start(config(resolver, prune: false))
      await_meta(pid, MapSet.new([node_name(0), node_name(1)]))
      Agent.update(dns, fn _ -> hostent([target(0)]) end)
      refute_receive {:probe, :disconnect, _, _}, 10 * @interval
    end

    test "prune and prune_grace are validated" do
      {_dns, resolver} = fake_dns(hostent([]))

      assert_raise ArgumentError, ~r/invalid value for :prune_grace: .*got: -1/, fn ->
        start(config(resolver, prune_grace: -1))
      end

      assert_raise ArgumentError, ~r/invalid value for :prune: .*got: "no"/, fn ->
        start(config(resolver, prune: "no"))
      end
    end
  end

  describe "the resolver function" do
    test "its records are sorted, so every pod takes the same max_nodes from a rotating answer" do
      targets = for i <- 0..9, do: target(i)
      rotations = for k <- 0..9, do: Enum.drop(targets, k) ++ Enum.take(targets, k)

      picks =
        for rotation <- rotations do
          {_dns, resolver} = fake_dns(hostent(rotation))
          {:ok, %{nodes: nodes}} = Strategy.discover(config(resolver, max_nodes: 3))
          nodes
        end

      assert Enum.uniq(picks) == [[node_name(0), node_name(1), node_name(2)]]
    end
  end

  describe "discover/1" do
    test "runs the loop's lookup and naming once, without connecting" do
      {_dns, resolver} = fake_dns(hostent([target(1), "bad_target.#{@domain}", target(0)]))

      assert {:ok, result} = Strategy.discover(config(resolver))
      assert result.query == "myapp-headless.default.svc.cluster.local."
      # Sorted as the native resolver sorts records: by priority, then target.
      assert result.nodes == [node_name(0), node_name(1)]
      assert result.rejected == [{"bad_target.#{@domain}", :invalid_hostname}]
      assert length(result.records) == 3
      refute_received {:probe, _, _, _}
    end

    test "gives the lookup's error" do
      {_dns, resolver} = fake_dns({:error, :nxdomain})
      assert Strategy.discover(config(resolver)) == {:error, :nxdomain}
    end
  end

  defp existing_atom?(string) do
    _ = String.to_existing_atom(string)
    true
  rescue
    ArgumentError -> false
  end

  defp drop_service(config), do: config |> Keyword.drop([:service, :namespace, :cluster_domain])
end
