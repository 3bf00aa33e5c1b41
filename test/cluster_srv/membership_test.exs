defmodule ClusterSRV.MembershipTest do
  # The membership rules, driven with plain data: no process, no DNS, no clock.
  use ExUnit.Case, async: true
  doctest ClusterSRV.Membership

  alias ClusterSRV.Membership

  @me :"app@me.svc"
  defp n(i), do: :"app@pod-#{i}.svc"

  defp new(opts \\ []), do: Membership.new(Keyword.merge([self: @me, query: "svc."], opts))

  defp answer(nodes, rejected \\ []), do: {:ok, %{nodes: nodes, rejected: rejected}}

  defp jobs(actions),
    do: for({kind, node} <- actions, kind in [:connect, :disconnect], do: {kind, node})

  defp logs(actions, level), do: for({:log, ^level, message} <- actions, do: message)

  describe "a successful answer" do
    test "connects every listed node not connected yet, never this node" do
      {_state, actions} = Membership.lookup_done(new(), answer([n(1), @me, n(2)]), [n(2)])
      assert jobs(actions) == [{:connect, n(1)}]
    end

    test "disconnects a known node it no longer lists, if connected" do
      state = new(meta: MapSet.new([n(1), n(2), n(3)]))
      {state, actions} = Membership.lookup_done(state, answer([n(1)]), [n(1), n(2)])
      # n(3) is not connected: it is forgotten, not disconnected.
      assert jobs(actions) == [{:disconnect, n(2)}]
      assert state.meta == MapSet.new([n(1), n(2)])
    end

    test "leaves a connected node alone that was never known" do
      {state, actions} = Membership.lookup_done(new(), answer([n(1)]), [n(1), n(9)])
      assert jobs(actions) == []
      # A listed node connected by someone else (OTP's global) becomes known.
      assert state.meta == MapSet.new([n(1)])
    end

    test "starts no second job for a node that has one" do
      {state, [_ | _]} = Membership.lookup_done(new(), answer([n(1)]), [])
      {_state, actions} = Membership.lookup_done(state, answer([n(1)]), [])
      assert jobs(actions) == []
    end
  end

  describe "a failure" do
    for {label, result} <- [
          servfail: {:error, :servfail},
          timeout: {:error, :timeout},
          empty: {:ok, %{nodes: [], rejected: []}},
          all_invalid: {:ok, %{nodes: [], rejected: [{"a_b.svc", :invalid_hostname}]}}
        ] do
      test "(#{label}) starts no job and changes no membership" do
        state = new(meta: MapSet.new([n(1), n(2)]))

        {after_failure, actions} =
          Membership.lookup_done(state, unquote(Macro.escape(result)), [n(1)])

        assert jobs(actions) == []
        assert after_failure.meta == state.meta
        assert after_failure.listed == state.listed
      end
    end

    test "warns when it starts and when its kind changes, and logs its end once" do
      reasons = [:servfail, :servfail, :timeout, {:io, "a"}, {:io, "b"}]

      {state, warnings} =
        Enum.reduce(reasons, {new(), []}, fn reason, {state, acc} ->
          {state, actions} = Membership.lookup_done(state, {:error, reason}, [])
          {state, acc ++ logs(actions, :warning)}
        end)

      assert length(warnings) == 3
      assert state.failures == 5
      {state, actions} = Membership.lookup_done(state, answer([n(1)]), [])
      assert logs(actions, :info) == ["lookup of svc. succeeded again after 5 failed polls"]
      {_state, actions} = Membership.lookup_done(state, answer([n(1)]), [])
      assert logs(actions, :info) == []
    end
  end

  describe "job outcomes" do
    test "a successful connect makes its node known; a failed one makes it a retry" do
      {state, _} = Membership.lookup_done(new(), answer([n(1), n(2)]), [])
      {state, _} = Membership.job_done(state, :connect, n(1), {:returned, true, 5})
      {state, actions} = Membership.job_done(state, :connect, n(2), {:returned, false, 5})
      assert state.meta == MapSet.new([n(1)])
      assert MapSet.member?(state.unreachable, n(2))
      assert [_] = logs(actions, :warning)
      # Retried on the next answer; a second failure is logged at debug level only.
      {state, actions} = Membership.lookup_done(state, answer([n(1), n(2)]), [n(1)])
      assert jobs(actions) == [{:connect, n(2)}]
      {_state, actions} = Membership.job_done(state, :connect, n(2), :timed_out)
      assert logs(actions, :warning) == []
    end

    test "a disconnect that fails oddly keeps its node known, so that it is tried again" do
      state = new(meta: MapSet.new([n(1)]))
      {state, [_ | _]} = Membership.lookup_done(state, answer([n(2)]), [n(1)])
      {state, _} = Membership.job_done(state, :disconnect, n(1), {:returned, {:error, :busy}, 1})
      assert MapSet.member?(state.meta, n(1))
      {_state, actions} = Membership.lookup_done(state, answer([n(2)]), [n(1), n(2)])
      assert {:disconnect, n(1)} in jobs(actions)
    end

    test "a disconnect that finds the node gone forgets it" do
      state = new(meta: MapSet.new([n(1)]))
      {state, _} = Membership.lookup_done(state, answer([n(2)]), [n(1)])
      {state, _} = Membership.job_done(state, :disconnect, n(1), {:returned, false, 1})
      refute MapSet.member?(state.meta, n(1))
    end
  end

  describe "retries" do
    test "at most max_retries run; a queued retry DNS dropped is not started" do
      nodes = for i <- 1..6, do: n(i)
      {state, _} = Membership.lookup_done(new(max_retries: 2), answer(nodes), [])

      state =
        Enum.reduce(nodes, state, fn node, state ->
          elem(Membership.job_done(state, :connect, node, {:returned, false, 1}), 0)
        end)

      {state, actions} = Membership.lookup_done(state, answer(nodes), [])
      assert jobs(actions) == [{:connect, n(1)}, {:connect, n(2)}]
      # n(3) and n(4) drop out of DNS while they wait.
      {state, _} = Membership.lookup_done(state, answer(nodes -- [n(3), n(4)]), [])
      {_state, actions} = Membership.job_done(state, :connect, n(1), {:returned, false, 1})
      assert jobs(actions) == [{:connect, n(5)}]
    end
  end

  describe "rejections" do
    test "each kind is logged when it appears, and again only after it went away" do
      bad = [{"a_b.svc", :invalid_hostname}]

      {_state, warned} =
        Enum.reduce([bad, bad, [], bad], {new(), []}, fn rejected, {state, acc} ->
          {state, actions} = Membership.lookup_done(state, answer([n(1)], rejected), [])
          {state, acc ++ logs(actions, :warning)}
        end)

      assert length(warned) == 2
    end
  end

  # -- Properties over random sequences of events ---------------------------------------------

  # StreamData is a hex package, so the generator is a small one over :rand. The seed is printed
  # with every failure; MEMBERSHIP_SEED=<seed> replays a run.
  @sequences 2_000
  @events 40
  @universe for i <- 1..8, do: :"app@pod-#{i}.svc"

  describe "the contract, over #{@sequences} random sequences of #{@events} events" do
    test "holds after every event" do
      seed = System.get_env("MEMBERSHIP_SEED", "#{:erlang.unique_integer([:positive])}")
      :rand.seed(:exsss, {String.to_integer(seed), 7, 13})

      for sequence <- 1..@sequences do
        world = %{
          state: new(max_retries: 2, meta: random_subset(@universe)),
          connected: random_subset(@universe),
          running: %{},
          listed: MapSet.new(),
          failure_kind: nil
        }

        Enum.reduce(1..@events, world, fn step, world ->
          event = random_event(world)

          check(
            world,
            event,
            "seed #{seed}, sequence #{sequence}, event #{step}: #{inspect(event)}"
          )
        end)
        |> converges("seed #{seed}, sequence #{sequence}, convergence")
      end
    end
  end

  defp random_subset(nodes),
    do: for(node <- nodes, :rand.uniform(2) == 1, into: MapSet.new(), do: node)

  defp random_event(world) do
    case :rand.uniform(10) do
      n when n <= 4 ->
        nodes = Enum.shuffle(Enum.to_list(random_subset([@me | @universe])))
        rejected = if :rand.uniform(3) == 1, do: [{"x_y.svc", :invalid_hostname}], else: []
        {:lookup, answer(nodes, rejected)}

      5 ->
        reason = Enum.random([:servfail, :timeout, :nxdomain, {:io, "x#{:rand.uniform(3)}"}])
        {:lookup, {:error, reason}}

      6 ->
        {:lookup, answer([], [{"x_y.svc", :invalid_hostname}])}

      7 when world.running != %{} ->
        # Someone else connects or disconnects a node meanwhile (OTP's global, a nodedown).
        {:world, Enum.random(@universe)}

      _ when world.running != %{} ->
        {node, kind} = Enum.random(world.running)

        outcome =
          Enum.random([
            {:returned, true, 1},
            {:returned, false, 1},
            {:returned, :ignored, 1},
            {:returned, {:error, :odd}, 1},
            {:crashed, :boom},
            :timed_out
          ])

        {:job_done, kind, node, outcome}

      _ ->
        {:lookup, answer([Enum.random(@universe)])}
    end
  end

  defp check(world, {:world, node}, _context) do
    connected =
      if MapSet.member?(world.connected, node),
        do: MapSet.delete(world.connected, node),
        else: MapSet.put(world.connected, node)

    %{world | connected: connected}
  end

  defp check(world, {:lookup, result} = event, context) do
    before = world.state
    {state, actions} = Membership.lookup_done(before, result, MapSet.to_list(world.connected))
    started = jobs(actions)

    case Membership.outcome(result) do
      {:error, reason} ->
        assert started == [], "#{context}: a failure started jobs: #{inspect(started)}"
        assert state.meta == before.meta, "#{context}: a failure changed meta"
        assert state.listed == before.listed, "#{context}: a failure changed what is listed"
        warned = Enum.any?(logs(actions, :warning), &(&1 =~ "failed:"))
        kind = ClusterSRV.Reasons.kind(reason)
        assert warned == (kind != world.failure_kind), "#{context}: warned #{warned}"
        after_event(world, state, actions, event, context) |> Map.put(:failure_kind, kind)

      :ok ->
        {:ok, %{nodes: nodes}} = result

        for {:disconnect, node} <- started do
          assert node not in nodes, "#{context}: disconnected a listed node #{node}"
          assert MapSet.member?(before.meta, node), "#{context}: disconnected an unknown #{node}"

          assert MapSet.member?(world.connected, node),
                 "#{context}: disconnected #{node}, not connected"
        end

        for {:connect, node} <- started do
          assert node in nodes, "#{context}: connected #{node}, which is not listed"
          refute MapSet.member?(world.connected, node), "#{context}: connected #{node} again"
        end

        # libcluster's meta: the known members, among the listed nodes or being disconnected.
        for node <- state.meta do
          assert node in nodes or world.running[node] == :disconnect or
                   {:disconnect, node} in started,
                 "#{context}: #{node} in meta, neither listed nor being disconnected"
        end

        for node <- nodes, node != @me, MapSet.member?(world.connected, node) do
          assert MapSet.member?(state.meta, node), "#{context}: connected #{node} not in meta"
        end

        # A known node DNS dropped, still connected, is being disconnected: nothing holds it
        # up but a connect of ours to it still running (the answer after it ends disconnects
        # the node, if the connect succeeded).
        for node <- before.meta,
            node not in nodes,
            MapSet.member?(world.connected, node),
            world.running[node] != :connect do
          assert {:disconnect, node} in started or world.running[node] == :disconnect,
                 "#{context}: #{node} was dropped, is connected, and is not disconnected"
        end

        # A node others connected is not unreachable, whatever our last connect said.
        for node <- state.unreachable do
          refute MapSet.member?(world.connected, node),
                 "#{context}: connected #{node} unreachable"
        end

        world = %{world | listed: MapSet.new(nodes), failure_kind: nil}
        after_event(world, state, actions, event, context)
    end
  end

  defp check(world, {:job_done, kind, node, outcome} = event, context) do
    {state, actions} = Membership.job_done(world.state, kind, node, outcome)
    world = %{world | running: Map.delete(world.running, node)}

    world =
      case {kind, outcome} do
        {:connect, {:returned, true, _}} ->
          assert MapSet.member?(state.meta, node), "#{context}: a connected node not in meta"
          %{world | connected: MapSet.put(world.connected, node)}

        {:disconnect, {:returned, value, _}} when value in [true, false, :ignored] ->
          refute MapSet.member?(state.meta, node), "#{context}: a disconnected node in meta"
          %{world | connected: MapSet.delete(world.connected, node)}

        {:disconnect, _odd} ->
          assert MapSet.member?(state.meta, node),
                 "#{context}: a failed disconnect forgot its node"

          world

        {:connect, _failed} ->
          refute MapSet.member?(state.meta, node), "#{context}: a failed connect left its node"
          world
      end

    for {:connect, started} <- jobs(actions) do
      assert MapSet.member?(world.listed, started), "#{context}: retried #{started}, not listed"
    end

    after_event(world, state, actions, event, context)
  end

  # What holds after any event: no action for this node, never two jobs for one node, retries
  # bounded and never left waiting while there is room.
  defp after_event(world, state, actions, _event, context) do
    refute MapSet.member?(state.meta, @me), "#{context}: this node in meta"

    running =
      Enum.reduce(jobs(actions), world.running, fn {kind, node}, running ->
        refute node == @me, "#{context}: a job for this node"
        refute Map.has_key?(running, node), "#{context}: a second job for #{node}"
        Map.put(running, node, kind)
      end)

    retries = Enum.count(state.jobs, &match?({_, {:connect, :running, true}}, &1))
    assert retries <= state.max_retries, "#{context}: #{retries} retries run"

    waiting =
      for node <- :queue.to_list(state.retries), MapSet.member?(state.listed, node), do: node

    assert retries == state.max_retries or waiting == [],
           "#{context}: #{inspect(waiting)} wait while only #{retries} retries run"

    # The queue holds exactly the retries that wait, each once.
    queued = for {node, {:connect, :queued, true}} <- state.jobs, do: node
    assert Enum.sort(:queue.to_list(state.retries)) == Enum.sort(queued), "#{context}: queue"

    # The rules' own view of the jobs matches the jobs really running.
    for {node, kind} <- running do
      assert match?({^kind, :running, _}, state.jobs[node]), "#{context}: #{node} not tracked"
    end

    %{world | state: state, running: running}
  end

  # However a sequence left things, once every job ends well and DNS answers steadily, the
  # strategy is connected to every listed node and knows no other.
  defp converges(world, context) do
    # At least one node: an empty answer is a failure, which rightly changes nothing.
    target =
      Enum.uniq([Enum.random(@universe) | for(node <- @universe, :rand.uniform(2) == 1, do: node)])

    world =
      Enum.reduce(1..30, world, fn _, world ->
        world = check(world, {:lookup, answer(target)}, context)

        Enum.reduce(world.running, world, fn {node, kind}, world ->
          check(world, {:job_done, kind, node, {:returned, true, 1}}, context)
        end)
      end)

    assert MapSet.subset?(MapSet.new(target), world.connected),
           "#{context}: connected #{inspect(world.connected)}, listed #{inspect(target)}"

    # Nodes it knew and DNS dropped are gone; nodes connected by others it never knew may stay.
    assert MapSet.subset?(world.state.meta, MapSet.new(target)),
           "#{context}: meta #{inspect(world.state.meta)}"

    assert world.running == %{}
  end
end
