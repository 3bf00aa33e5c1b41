defmodule ClusterSRV.MembershipTest do
  # The membership rules, driven with plain data: no process, no DNS, no clock.
  use ExUnit.Case, async: true
  doctest ClusterSRV.Membership

  alias ClusterSRV.Membership

  @me :"app@me.svc"
  @universe for i <- 1..8, do: :"app@pod-#{i}.svc"
  defp n(i), do: :"app@pod-#{i}.svc"

  defp new(opts \\ []), do: Membership.new(Keyword.merge([self: @me, query: "svc."], opts))

  defp answer(nodes, rejected \\ []), do: {:ok, %{nodes: nodes, rejected: rejected}}

  defp done(state, result, connected, now \\ 0),
    do: Membership.lookup_done(state, result, connected, now)

  defp jobs(actions),
    do: for({kind, node} <- actions, kind in [:connect, :disconnect], do: {kind, node})

  defp logs(actions, level), do: for({:log, ^level, message} <- actions, do: message)

  describe "a successful answer" do
    test "connects every listed node not connected yet, never this node" do
      {_state, actions} = done(new(), answer([n(1), @me, n(2)]), [n(2)])
      assert jobs(actions) == [{:connect, n(1)}]
    end

    test "disconnects a known node it no longer lists, if connected" do
      state = new(meta: MapSet.new([n(1), n(2), n(3)]))
      {state, actions} = done(state, answer([n(1)]), [n(1), n(2)])
      # n(3) is not connected: it is forgotten, not disconnected.
      assert jobs(actions) == [{:disconnect, n(2)}]
      assert state.meta == MapSet.new([n(1), n(2)])
    end

    test "disconnects a node it listed, failed to connect, and that then connected on its own" do
      {state, [_ | _]} = done(new(), answer([n(1), n(2)]), [])
      {state, _} = Membership.job_done(state, :connect, n(1), {:returned, true, 1})
      {state, _} = Membership.job_done(state, :connect, n(2), {:returned, false, 1})
      refute MapSet.member?(state.meta, n(2))

      # n(2)'s own strategy connects it to us; the next answer no longer lists it.
      {state, actions} = done(state, answer([n(1)]), [n(1), n(2)])
      assert jobs(actions) == [{:disconnect, n(2)}]
      assert MapSet.member?(state.meta, n(2))
    end

    test "leaves a connected node alone that was never known" do
      {state, actions} = done(new(), answer([n(1)]), [n(1), n(9)])
      assert jobs(actions) == []
      # A listed node connected by someone else (OTP's global) becomes known.
      assert state.meta == MapSet.new([n(1)])
    end

    test "starts no second job for a node that has one" do
      {state, [_ | _]} = done(new(), answer([n(1)]), [])
      {_state, actions} = done(state, answer([n(1)]), [])
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

        {after_failure, actions} = done(state, unquote(Macro.escape(result)), [n(1)])

        assert jobs(actions) == []
        assert after_failure.meta == state.meta
        assert after_failure.listed == state.listed
      end
    end

    test "warns when it starts and when its kind changes, and logs its end once" do
      reasons = [:servfail, :servfail, :timeout, {:io, "a"}, {:io, "b"}]

      {state, warnings} =
        Enum.reduce(reasons, {new(), []}, fn reason, {state, acc} ->
          {state, actions} = done(state, {:error, reason}, [])
          {state, acc ++ logs(actions, :warning)}
        end)

      assert length(warnings) == 3
      assert Membership.status(state).failures == 5
      {state, actions} = done(state, answer([n(1)]), [])
      assert logs(actions, :info) == ["lookup of svc. succeeded again after 5 failed polls"]
      {_state, actions} = done(state, answer([n(1)]), [])
      assert logs(actions, :info) == []
    end
  end

  describe "job outcomes" do
    test "a successful connect makes its node known; a failed one makes it a retry" do
      {state, _} = done(new(), answer([n(1), n(2)]), [])
      {state, _} = Membership.job_done(state, :connect, n(1), {:returned, true, 5})
      {state, actions} = Membership.job_done(state, :connect, n(2), {:returned, false, 5})
      assert state.meta == MapSet.new([n(1)])
      assert state.unreachable[n(2)] == :unreachable
      assert [_] = logs(actions, :warning)
      # Retried on the next answer; a second failure is logged at debug level only.
      {state, actions} = done(state, answer([n(1), n(2)]), [n(1)])
      assert jobs(actions) == [{:connect, n(2)}]
      {_state, actions} = Membership.job_done(state, :connect, n(2), :timed_out)
      assert logs(actions, :warning) == []
    end

    test "a disconnect that fails oddly keeps its node known, so that it is tried again" do
      state = new(meta: MapSet.new([n(1)]))
      {state, [_ | _]} = done(state, answer([n(2)]), [n(1)])
      {state, _} = Membership.job_done(state, :disconnect, n(1), {:returned, {:error, :busy}, 1})
      assert MapSet.member?(state.meta, n(1))
      {_state, actions} = done(state, answer([n(2)]), [n(1), n(2)])
      assert {:disconnect, n(1)} in jobs(actions)
    end

    test "a disconnect that finds the node gone forgets it" do
      state = new(meta: MapSet.new([n(1)]))
      {state, _} = done(state, answer([n(2)]), [n(1)])
      {state, _} = Membership.job_done(state, :disconnect, n(1), {:returned, false, 1})
      refute MapSet.member?(state.meta, n(1))
    end
  end

  describe "retries" do
    test "at most max_retries run; a queued retry DNS dropped is not started" do
      nodes = for i <- 1..6, do: n(i)
      {state, _} = done(new(max_retries: 2), answer(nodes), [])

      state =
        Enum.reduce(nodes, state, fn node, state ->
          elem(Membership.job_done(state, :connect, node, {:returned, false, 1}), 0)
        end)

      {state, actions} = done(state, answer(nodes), [])
      assert jobs(actions) == [{:connect, n(1)}, {:connect, n(2)}]
      # n(3) and n(4) drop out of DNS while they wait.
      {state, _} = done(state, answer(nodes -- [n(3), n(4)]), [])
      {_state, actions} = Membership.job_done(state, :connect, n(1), {:returned, false, 1})
      assert jobs(actions) == [{:connect, n(5)}]
    end
  end

  describe "rejections" do
    test "each kind is logged when it appears, and again only after it went away" do
      bad = [{"a_b.svc", :invalid_hostname}]

      {_state, warned} =
        Enum.reduce([bad, bad, [], bad], {new(), []}, fn rejected, {state, acc} ->
          {state, actions} = done(state, answer([n(1)], rejected), [])
          {state, acc ++ logs(actions, :warning)}
        end)

      assert length(warned) == 2
    end
  end

  describe "removal policy" do
    test "with prune_grace, a dropped node stays until it has been missing that long" do
      state = new(meta: MapSet.new([n(1), n(2)]), prune_grace: 3_000)
      {state, actions} = done(state, answer([n(1)]), [n(1), n(2)], 10_000)
      assert jobs(actions) == []

      assert {:emit, [:cluster_srv, :removal, :deferred], %{grace_ms: 3_000},
              %{node: n(2), due: 13_000}} in actions

      assert Membership.status(state).pending_removals == %{n(2) => 13_000}
      assert MapSet.member?(state.meta, n(2))

      {state, actions} = done(state, answer([n(1)]), [n(1), n(2)], 12_999)
      assert jobs(actions) == []
      {_state, actions} = done(state, answer([n(1)]), [n(1), n(2)], 13_000)
      assert jobs(actions) == [{:disconnect, n(2)}]

      assert {:emit, [:cluster_srv, :removal, :done], %{missing_ms: 3_000}, %{node: n(2)}} in actions
    end

    test "a node listed again before the grace ends is kept, and its clock starts over" do
      state = new(meta: MapSet.new([n(1), n(2)]), prune_grace: 3_000)
      {state, _} = done(state, answer([n(1)]), [n(1), n(2)], 0)
      {state, _} = done(state, answer([n(1), n(2)]), [n(1), n(2)], 2_000)
      assert state.missing == %{}
      {state, _} = done(state, answer([n(1)]), [n(1), n(2)], 4_000)
      {_state, actions} = done(state, answer([n(1)]), [n(1), n(2)], 6_000)
      assert jobs(actions) == []
    end

    test "failed lookups meanwhile do not reset the clock, nor remove anyone" do
      state = new(meta: MapSet.new([n(1), n(2)]), prune_grace: 3_000)
      {state, _} = done(state, answer([n(1)]), [n(1), n(2)], 0)
      {state, actions} = done(state, {:error, :timeout}, [n(1), n(2)], 5_000)
      assert jobs(actions) == []
      {_state, actions} = done(state, answer([n(1)]), [n(1), n(2)], 6_000)
      assert jobs(actions) == [{:disconnect, n(2)}]
    end

    test "with prune: false, DNS never disconnects anyone" do
      state = new(meta: MapSet.new([n(1), n(2)]), prune: false)

      state =
        Enum.reduce(1..5, state, fn i, state ->
          {state, actions} = done(state, answer([n(1)]), [n(1), n(2)], i * 10_000)
          assert jobs(actions) == []
          state
        end)

      assert MapSet.member?(state.meta, n(2))
      assert Membership.status(state).pending_removals == %{}
    end
  end

  describe "this node's own name" do
    test "when it drops out of DNS after being listed, the node leaves: no new connects" do
      {state, _} = done(new(), answer([@me, n(1)]), [], 0)
      {state, actions} = done(state, answer([n(1), n(2)]), [], 1_000)
      assert Membership.leaving?(state)
      assert jobs(actions) == []
      assert [_] = logs(actions, :info)
      # Listed again: it connects as before.
      {state, actions} = done(state, answer([@me, n(1), n(2)]), [], 2_000)
      refute Membership.leaving?(state)
      assert {:connect, n(2)} in jobs(actions)
    end

    test "missing from 3 successful answers in a row, never listed, it is checked once" do
      results = [
        answer([n(1)]),
        {:error, :timeout},
        answer([n(1)]),
        answer([], []),
        answer([n(1)])
      ]

      {state, checks} =
        Enum.reduce(results, {new(), 0}, fn result, {state, checks} ->
          {state, actions} = done(state, result, [], 0)
          {state, checks + Enum.count(actions, &(&1 == :self_check))}
        end)

      assert checks == 1
      assert state.self_listed == false

      causes = [
        %{cause: :name_mismatch, message: "m", dialed: "app@x.svc"},
        %{cause: :short_names, message: "s", dialed: nil}
      ]

      {state, actions} = Membership.self_check_done(state, {:ok, causes})
      assert logs(actions, :warning) == ["m", "s"]
      assert [_, _] = for({:emit, [:cluster_srv, :self_check], _, _} = e <- actions, do: e)
      # More answers without it: the check is not run again.
      {state, actions} = done(state, answer([n(1)]), [], 0)
      refute :self_check in actions
      # Listed at last: one line says so, and the check starts over.
      {state, actions} = done(state, answer([@me, n(1)]), [], 0)
      assert logs(actions, :info) == ["this node is listed now, as #{inspect(@me)}"]
      assert state.self_misses == 0
    end

    test "a self-check that could not run runs again after 3 more answers without this node" do
      {state, checks} =
        Enum.reduce(1..3, {new(), []}, fn _, {state, checks} ->
          {state, actions} = done(state, answer([n(1)]), [], 0)
          {state, checks ++ for(:self_check <- actions, do: :self_check)}
        end)

      assert checks == [:self_check]

      {state, actions} =
        Membership.self_check_done(state, {:error, {:self_check_crashed, :killed}})

      assert [warning] = logs(actions, :warning)
      assert warning =~ "could not run"
      assert warning =~ ":killed"

      actions = Enum.flat_map(1..3, fn _ -> elem(done(state, answer([n(1)]), [], 0), 1) end)
      assert :self_check not in actions

      {_state, actions} =
        Enum.reduce(1..3, {state, []}, fn _, {state, acc} ->
          {state, actions} = done(state, answer([n(1)]), [], 0)
          {state, acc ++ actions}
        end)

      assert Enum.count(actions, &(&1 == :self_check)) == 1
    end

    test "a node that is not distributed is never checked" do
      state = Membership.new(self: :nonode@nohost, query: "svc.")

      actions = Enum.flat_map(1..5, fn _ -> elem(done(state, answer([n(1)]), [], 0), 1) end)

      refute :self_check in actions
    end
  end

  describe "several sources" do
    @a {"svc.", :srv}
    @b {"other.", :a}

    defp two(opts \\ []),
      do: new([sources: [%{name: "svc.", type: :srv}, %{name: "other.", type: :a}]] ++ opts)

    test "a node is kept while a source that listed it fails, and dropped once all succeed without it" do
      {state, _} = done(two(), [{@a, answer([n(1)])}, {@b, answer([n(2)])}], [])
      state = connect_all(state, [n(1), n(2)])
      # b fails: n(2), which only b listed, stays.
      {state, actions} =
        done(state, [{@a, answer([n(1)])}, {@b, {:error, :timeout}}], [n(1), n(2)])

      assert jobs(actions) == []
      # b succeeds without n(2): now it goes.
      {_state, actions} = done(state, [{@a, answer([n(1)])}, {@b, answer([n(3)])}], [n(1), n(2)])
      assert {:disconnect, n(2)} in jobs(actions)
    end

    @v4 {"svc.", :a}
    @v6 {"svc.", :aaaa}

    defp dual(opts \\ []),
      do: new([sources: [%{name: "svc.", type: :a}, %{name: "svc.", type: :aaaa}]] ++ opts)

    test "no records for one type replaces what it listed, quietly, while another type answers" do
      {state, _} = done(dual(), [{@v4, answer([n(1)])}, {@v6, answer([n(2)])}], [])
      state = connect_all(state, [n(1), n(2)])

      # n(2)'s AAAA record is deleted; the name keeps its A records.
      {state, actions} =
        done(state, [{@v4, answer([n(1)])}, {@v6, {:error, :no_records}}], [n(1), n(2)])

      assert jobs(actions) == [{:disconnect, n(2)}]
      assert logs(actions, :warning) == []
      assert state.listed == MapSet.new([n(1)])

      # And it stays dropped: nothing keeps an old list alive.
      {_state, actions} =
        done(state, [{@v4, answer([n(1)])}, {@v6, {:error, :no_records}}], [n(1)])

      assert jobs(actions) == []
    end

    test "an answer with no valid name replaces what its source listed, while another answers" do
      {state, _} = done(two(), [{@a, answer([n(1)])}, {@b, answer([n(2)])}], [])
      state = connect_all(state, [n(1), n(2)])
      bad = answer([], [{"x_y.other.", :invalid_hostname}])
      {_state, actions} = done(state, [{@a, answer([n(1)])}, {@b, bad}], [n(1), n(2)])
      assert jobs(actions) == [{:disconnect, n(2)}]
    end

    test "NXDOMAIN for a name none of whose types answered replaces its lists" do
      {state, _} = done(two(), [{@a, answer([n(1)])}, {@b, answer([n(2)])}], [])
      state = connect_all(state, [n(1), n(2)])

      {state, actions} =
        done(state, [{@a, answer([n(1)])}, {@b, {:error, :nxdomain}}], [n(1), n(2)])

      assert jobs(actions) == [{:disconnect, n(2)}]
      assert Membership.status(state).failing == %{}
    end

    test "NXDOMAIN for one type of a name whose other type answered is a failure, not a removal" do
      {state, _} = done(dual(), [{@v4, answer([n(1)])}, {@v6, answer([n(2)])}], [])
      state = connect_all(state, [n(1), n(2)])

      {state, actions} =
        done(state, [{@v4, answer([n(1)])}, {@v6, {:error, :nxdomain}}], [n(1), n(2)])

      assert jobs(actions) == []
      assert [warning] = logs(actions, :warning)
      assert warning =~ "lookup of svc. (AAAA) failed: the name does not exist"
      assert Membership.status(state).failing == %{@v6 => :nxdomain}
    end

    test "a poll in which every source says no one is there changes nothing" do
      {state, _} = done(dual(), [{@v4, answer([n(1)])}, {@v6, answer([n(2)])}], [])
      state = connect_all(state, [n(1), n(2)])

      {after_poll, actions} =
        done(state, [{@v4, {:error, :nxdomain}}, {@v6, {:error, :nxdomain}}], [n(1), n(2)])

      assert jobs(actions) == []
      assert after_poll.listed == state.listed
      assert after_poll.per_source[@v6].listed == MapSet.new([n(2)])
    end

    test "a source that keeps failing keeps its list for source_grace at most, then drops it" do
      state = two(source_grace: 10_000)
      {state, _} = done(state, [{@a, answer([n(1)])}, {@b, answer([n(2)])}], [], 0)
      state = connect_all(state, [n(1), n(2)])
      failing = [{@a, answer([n(1)])}, {@b, {:error, :servfail}}]

      {state, actions} = done(state, failing, [n(1), n(2)], 1_000)
      assert jobs(actions) == []
      assert [warning] = logs(actions, :warning)
      assert warning =~ "keeping the 1 nodes it listed for up to 10000 ms"

      # A whole outage meanwhile changes nothing, and does not count towards the grace.
      {state, actions} =
        done(state, [{@a, {:error, :timeout}}, {@b, {:error, :timeout}}], [n(1), n(2)], 6_000)

      assert jobs(actions) == []
      {state, actions} = done(state, failing, [n(1), n(2)], 7_000)
      assert jobs(actions) == []
      {state, actions} = done(state, failing, [n(1), n(2)], 16_999)
      assert jobs(actions) == []

      {state, actions} = done(state, failing, [n(1), n(2)], 17_000)
      assert jobs(actions) == [{:disconnect, n(2)}]
      assert Enum.any?(logs(actions, :warning), &(&1 =~ "no longer keeps 1 node(s)"))

      # Once it answers again, what it lists counts at once.
      {_state, actions} =
        done(state, [{@a, answer([n(1)])}, {@b, answer([n(3)])}], [n(1)], 18_000)

      assert jobs(actions) == [{:connect, n(3)}]
    end

    test "a failure of every source is one failed poll; each source warns for itself" do
      {state, actions} = done(two(), [{@a, {:error, :servfail}}, {@b, {:error, :timeout}}], [])
      assert length(logs(actions, :warning)) == 2
      assert Membership.status(state).failures == 1
      assert Enum.any?(logs(actions, :warning), &(&1 =~ "lookup of other. (A) failed"))
    end

    test "over random rounds, no node listed by a source's last success is ever disconnected" do
      seed = System.get_env("MEMBERSHIP_SEED", "#{:erlang.unique_integer([:positive])}")
      :rand.seed(:exsss, {String.to_integer(seed), 3, 5})

      for sequence <- 1..500 do
        Enum.reduce(1..30, {two(), %{@a => MapSet.new(), @b => MapSet.new()}, MapSet.new()}, fn
          step, {state, last, connected} ->
            results =
              for source <- [@a, @b] do
                if :rand.uniform(3) == 1,
                  do: {source, {:error, :timeout}},
                  else: {source, answer(Enum.to_list(random_subset(@universe)))}
              end

            {state, actions} = done(state, results, MapSet.to_list(connected), step * 1_000)

            # A poll that names anyone replaces each answering source's list, an empty answer
            # included; a poll that names no one changes nothing.
            names_anyone? = Enum.any?(results, &match?({_, {:ok, %{nodes: [_ | _]}}}, &1))

            last =
              Enum.reduce(results, last, fn
                {source, {:ok, %{nodes: nodes}}}, last when names_anyone? ->
                  Map.put(last, source, MapSet.new(nodes))

                _, last ->
                  last
              end)

            still_listed = MapSet.union(last[@a], last[@b])

            for {:disconnect, node} <- jobs(actions) do
              refute MapSet.member?(still_listed, node),
                     "seed #{seed}, sequence #{sequence}, step #{step}: disconnected #{node}, " <>
                       "which a source's last success still lists"
            end

            # Every job ends well at once.
            {state, connected} =
              Enum.reduce(jobs(actions), {state, connected}, fn {kind, node},
                                                                {state, connected} ->
                {state, _} = Membership.job_done(state, kind, node, {:returned, true, 1})

                connected =
                  if kind == :connect,
                    do: MapSet.put(connected, node),
                    else: MapSet.delete(connected, node)

                {state, connected}
              end)

            {state, last, connected}
        end)
      end
    end

    defp connect_all(state, nodes) do
      Enum.reduce(nodes, state, fn node, state ->
        elem(Membership.job_done(state, :connect, node, {:returned, true, 1}), 0)
      end)
    end
  end

  describe "answers some of whose targets could not be resolved (partial)" do
    # node_naming: :ip, where a node (app@<address>) cannot be told from its target.
    defp t(i), do: "pod-#{i}.svc"

    defp named(pairs),
      do: {:ok, %{nodes: for({_, node} <- pairs, do: node), rejected: [], by_target: pairs}}

    defp partial(pairs, targets) do
      {:ok, %{nodes: nodes, by_target: by_target} = answer} = named(pairs)
      unresolved = for target <- targets, do: {target, :timeout}
      {:ok, %{answer | nodes: nodes, by_target: by_target} |> Map.put(:unresolved, unresolved)}
    end

    test "keep the node an unresolved target had, and drop a target DNS no longer lists" do
      {state, _} = done(new(), named([{t(1), n(1)}, {t(2), n(2)}, {t(3), n(3)}]), [], 0)
      state = connect_all(state, [n(1), n(2), n(3)])
      connected = [n(1), n(2), n(3)]

      # pod-2's address lookup timed out, and pod-3 is no longer listed: pod-3 goes, pod-2 stays.
      {state, actions} = done(state, partial([{t(1), n(1)}], [t(2)]), connected, 1_000)
      assert jobs(actions) == [{:disconnect, n(3)}]
      assert state.listed == MapSet.new([n(1), n(2)])
      assert [warning] = logs(actions, :warning)
      assert warning =~ "the address of 1 SRV target(s) could not be looked up"

      # It stays for as long as its target is listed and its address cannot be looked up.
      {state, actions} = done(state, partial([{t(1), n(1)}], [t(2)]), [n(1), n(2)], 600_000)
      assert jobs(actions) == []

      # A new pod it could resolve is connected meanwhile.
      {state, actions} =
        done(state, partial([{t(1), n(1)}, {t(4), n(4)}], [t(2)]), [n(1), n(2)], 601_000)

      assert jobs(actions) == [{:connect, n(4)}]
      state = connect_all(state, [n(4)])

      # Answered again, at another address (a pod recreated under its name): the old node goes.
      {_state, actions} =
        done(
          state,
          named([{t(1), n(1)}, {t(2), n(5)}, {t(4), n(4)}]),
          [n(1), n(2), n(4)],
          602_000
        )

      assert Enum.sort(jobs(actions)) == [{:connect, n(5)}, {:disconnect, n(2)}]
    end

    test "an unresolved target never named before keeps no one" do
      {state, _} = done(new(), named([{t(1), n(1)}]), [], 0)
      {state, actions} = done(state, partial([{t(1), n(1)}], [t(2)]), [n(1)], 1_000)
      assert jobs(actions) == []
      assert state.listed == MapSet.new([n(1)])
    end

    test "this node's own target unresolved does not make it leave" do
      {state, _} = done(new(), named([{"me.svc", @me}, {t(1), n(1)}]), [], 0)
      {state, actions} = done(state, partial([{t(1), n(1)}], ["me.svc"]), [n(1)], 1_000)
      refute Membership.leaving?(state)
      assert logs(actions, :info) == []
    end

    test "a partial answer that names no one changes nothing" do
      {state, _} = done(new(), named([{t(1), n(1)}, {t(2), n(2)}]), [], 0)
      state = connect_all(state, [n(1), n(2)])
      {after_poll, actions} = done(state, partial([], [t(9)]), [n(1), n(2)], 1_000)
      assert jobs(actions) == []
      assert after_poll.listed == state.listed
    end
  end

  describe "a peer that said it is leaving" do
    defp leaving_peer(now) do
      {state, _} = done(new(), answer([@me, n(1), n(2)]), [], 0)
      state = connect_all(state, [n(1), n(2)])
      {state, [_log]} = Membership.peer_leaving(state, n(2), now)
      state
    end

    test "is not connected again while still connected when the next poll lands" do
      state = leaving_peer(1_000)
      # The poll lands before n(2) has disconnected: its mark must hold.
      {state, actions} = done(state, answer([@me, n(1), n(2)]), [n(1), n(2)], 1_100)
      assert jobs(actions) == []
      assert Map.has_key?(state.peers_leaving, n(2))
      # It disconnects; DNS still lists it (a terminating pod stays listed): no connect.
      {_state, actions} = done(state, answer([@me, n(1), n(2)]), [n(1)], 2_000)
      assert jobs(actions) == []
    end

    test "is connected again once its 30 s are up, and not before" do
      state = leaving_peer(1_000)
      {state, _} = done(state, answer([@me, n(1), n(2)]), [n(1)], 2_000)
      {state, actions} = done(state, answer([@me, n(1), n(2)]), [n(1)], 30_999)
      assert jobs(actions) == []
      {_state, actions} = done(state, answer([@me, n(1), n(2)]), [n(1)], 31_000)
      assert jobs(actions) == [{:connect, n(2)}]
    end

    test "loses its mark once it was seen gone and then connected again on its own" do
      state = leaving_peer(1_000)
      {state, _} = done(state, answer([@me, n(1), n(2)]), [n(1)], 2_000)
      # Its pod came back under the same name and connected to us itself.
      {state, _} = done(state, answer([@me, n(1), n(2)]), [n(1), n(2)], 3_000)
      assert state.peers_leaving == %{}
      # Should it drop out again, it is connected as any listed node.
      {_state, actions} = done(state, answer([@me, n(1), n(2)]), [n(1)], 4_000)
      assert jobs(actions) == [{:connect, n(2)}]
    end

    test "loses its mark when DNS drops it" do
      state = leaving_peer(1_000)
      {state, _} = done(state, answer([@me, n(1)]), [n(1), n(2)], 2_000)
      assert state.peers_leaving == %{}
    end
  end

  # -- Properties over random sequences of events ---------------------------------------------

  # StreamData is a hex package, so the generator is a small one over :rand. The seed is printed
  # with every failure; MEMBERSHIP_SEED=<seed> replays a run.
  @sequences 2_000
  @events 40

  describe "the contract, over #{@sequences} random sequences of #{@events} events" do
    test "holds after every event" do
      seed = System.get_env("MEMBERSHIP_SEED", "#{:erlang.unique_integer([:positive])}")
      :rand.seed(:exsss, {String.to_integer(seed), 7, 13})

      for sequence <- 1..@sequences do
        rules = [
          max_retries: 2,
          meta: random_subset(@universe),
          prune: Enum.random([true, true, false]),
          prune_grace: Enum.random([0, 0, 1_000, 3_000])
        ]

        world = %{
          state: new(rules),
          connected: random_subset(@universe),
          running: %{},
          listed: MapSet.new(),
          failure_kind: nil,
          now: 0,
          unlisted_since: %{},
          was_listed: false
        }

        context = "seed #{seed}, sequence #{sequence} (#{inspect(Keyword.drop(rules, [:meta]))})"

        Enum.reduce(1..@events, world, fn step, world ->
          event = random_event(world)
          check(world, event, "#{context}, event #{step}: #{inspect(event)}")
        end)
        |> converges("#{context}, convergence")
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
    now = world.now + :rand.uniform(1_500) - 1
    world = %{world | now: now}

    {state, actions} =
      Membership.lookup_done(before, result, MapSet.to_list(world.connected), now)

    started = jobs(actions)

    case Membership.outcome(result) do
      {:error, reason} ->
        assert started == [], "#{context}: a failure started jobs: #{inspect(started)}"
        assert state.meta == before.meta, "#{context}: a failure changed meta"
        assert state.listed == before.listed, "#{context}: a failure changed what is listed"
        assert state.missing == before.missing, "#{context}: a failure changed pending removals"
        warned = Enum.any?(logs(actions, :warning), &(&1 =~ "failed:"))
        kind = ClusterSRV.Reasons.kind(reason)
        assert warned == (kind != world.failure_kind), "#{context}: warned #{warned}"
        after_event(world, state, actions, event, context) |> Map.put(:failure_kind, kind)

      :ok ->
        {:ok, %{nodes: nodes}} = result
        check_answer(world, before, state, nodes, started, context)

        world = %{
          world
          | listed: MapSet.new(nodes),
            failure_kind: nil,
            unlisted_since: unlisted_since(world, nodes, now),
            was_listed: world.was_listed or @me in nodes
        }

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
      refute Membership.leaving?(state), "#{context}: a leaving node retried #{started}"
    end

    after_event(world, state, actions, event, context)
  end

  defp unlisted_since(world, nodes, now) do
    Enum.reduce(@universe, world.unlisted_since, fn node, since ->
      if node in nodes, do: Map.delete(since, node), else: Map.put_new(since, node, now)
    end)
  end

  # What a successful answer may do, and must.
  defp check_answer(world, before, state, nodes, started, context) do
    now = world.now
    since = unlisted_since(world, nodes, now)

    for {:disconnect, node} <- started do
      assert before.prune, "#{context}: disconnected #{node} with prune: false"
      assert node not in nodes, "#{context}: disconnected a listed node #{node}"

      assert MapSet.member?(before.meta, node) or MapSet.member?(before.listed, node),
             "#{context}: disconnected #{node}, neither known nor listed by the last answer"

      assert MapSet.member?(world.connected, node),
             "#{context}: disconnected #{node}, not connected"

      assert now - since[node] >= before.prune_grace,
             "#{context}: disconnected #{node} #{now - since[node]} ms after DNS dropped it"
    end

    # A leaving node (listed, then not) starts no connect.
    leaving? = world.was_listed and @me not in nodes

    for {:connect, node} <- started do
      refute leaving?, "#{context}: a leaving node connected #{node}"
      assert node in nodes, "#{context}: connected #{node}, which is not listed"
      refute MapSet.member?(world.connected, node), "#{context}: connected #{node} again"
    end

    # libcluster's meta: the known members, among the listed nodes, being disconnected, or
    # waiting for their removal.
    for node <- state.meta do
      assert node in nodes or world.running[node] == :disconnect or
               {:disconnect, node} in started or Map.has_key?(state.missing, node),
             "#{context}: #{node} in meta, neither listed, being disconnected nor waiting"
    end

    for node <- nodes, node != @me, MapSet.member?(world.connected, node) do
      assert MapSet.member?(state.meta, node), "#{context}: connected #{node} not in meta"
    end

    # A known node DNS dropped, still connected, is being disconnected or waits for its
    # removal: nothing else holds it up but a connect of ours to it still running (the answer
    # after it ends disconnects the node, if the connect succeeded).
    for node <- before.meta,
        node not in nodes,
        MapSet.member?(world.connected, node),
        world.running[node] != :connect do
      assert {:disconnect, node} in started or world.running[node] == :disconnect or
               Map.has_key?(state.missing, node),
             "#{context}: #{node} was dropped, is connected, and is not disconnected"
    end

    # A node others connected is not unreachable, whatever our last connect said.
    for {node, _why} <- state.unreachable do
      refute MapSet.member?(world.connected, node), "#{context}: connected #{node} unreachable"
    end
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

    assert retries == state.max_retries or waiting == [] or Membership.leaving?(state),
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
    # At least one node (an empty answer is a failure, which rightly changes nothing), and
    # this one: a leaving node rightly starts no connects.
    others = for node <- @universe, :rand.uniform(2) == 1, do: node
    target = Enum.uniq([@me, Enum.random(@universe) | others])

    world =
      Enum.reduce(1..30, world, fn _, world ->
        world = check(world, {:lookup, answer(target)}, context)

        Enum.reduce(world.running, world, fn {node, kind}, world ->
          check(world, {:job_done, kind, node, {:returned, true, 1}}, context)
        end)
      end)

    listed = MapSet.new(List.delete(target, @me))

    assert MapSet.subset?(listed, world.connected),
           "#{context}: connected #{inspect(world.connected)}, listed #{inspect(target)}"

    # Nodes it knew and DNS dropped are gone once prune_grace has passed (the answers above
    # came over about 20 s); nodes connected by others it never knew may stay, and with
    # prune: false so do the ones it knew.
    if world.state.prune do
      assert MapSet.subset?(world.state.meta, listed),
             "#{context}: meta #{inspect(world.state.meta)}"
    end

    assert world.running == %{}
  end
end
