defmodule ClusterSRV.Chaos.InvariantsTest do
  # The chaos run's checks, on hand-made journals: each flags what it must, and nothing a
  # correct strategy may do (a disconnect an answer in flight explains, a pod that left).
  use ExUnit.Case, async: true

  alias ClusterSRV.Harness.Chaos.Invariants

  @a :"app@10.244.0.10"
  @b :"app@10.244.0.11"
  @c :"app@10.244.0.12"

  @setup %{
    t0: 0,
    quiet_at: 50_000,
    sample_at: 20_000,
    end_at: 60_000,
    faults: [],
    groups: %{"g" => %{lookup: 3_000, window: 3_000, bound_b: 5_000, bound_c: 9_000}}
  }

  # Three pods started and listed at 1 s, in a full mesh at 2 s; then `more` events.
  defp journal(more) do
    started =
      for {node, i} <- Enum.with_index([@a, @b, @c]) do
        [
          {1_000, :truth, {:started, "g", "svc", "p#{i}", node, {10, 244, 0, 10 + i}}},
          {1_000, :truth, {:listed, "g", "svc", node}},
          {2_000, {:pod, "svc", "p#{i}"},
           {:members, MapSet.delete(MapSet.new([@a, @b, @c]), node)}}
        ]
      end

    Enum.sort_by(List.flatten(started) ++ more, &elem(&1, 0))
  end

  defp violations(events, key), do: Invariants.check(events, @setup).violations[key]

  describe "a. no live, listed pod disconnected" do
    test "flags a strategy's disconnect of a pod alive and listed for the whole window" do
      assert [%{at: 30_000, text: text}] =
               violations(journal([{30_000, {:pod, "svc", "p0"}, {:disconnect, @b}}]), :a)

      assert text =~ "disconnected app@10.244.0.11"
    end

    test "allows it when the pod left the zone within the window (an answer in flight)" do
      events =
        journal([
          {28_000, :truth, {:unlisted, "g", "svc", @b}},
          {28_500, :truth, {:listed, "g", "svc", @b}},
          {30_000, {:pod, "svc", "p0"}, {:disconnect, @b}}
        ])

      assert violations(events, :a) == []
    end

    test "allows it when the pod was stopping" do
      events =
        journal([
          {29_900, :truth, {:stopping, "g", "svc", "p1", @b, :terminate}},
          {30_000, {:pod, "svc", "p0"}, {:disconnect, @b}}
        ])

      assert violations(events, :a) == []
    end
  end

  describe "b. a live pod out of the zone is dropped" do
    test "flags a pod still connected to it at the bound after the faults stopped" do
      events = journal([{40_000, :truth, {:unlisted, "g", "svc", @c}}])
      assert [%{text: first}, %{text: second}] = violations(events, :b)
      assert first =~ "app@10.244.0.10 is still connected to app@10.244.0.12"
      assert second =~ "app@10.244.0.11 is still connected to app@10.244.0.12"
    end

    test "holds once every other pod dropped it in time" do
      events =
        journal([
          {40_000, :truth, {:unlisted, "g", "svc", @c}},
          {52_000, {:pod, "svc", "p0"}, {:members, MapSet.new([@b])}},
          {52_000, {:pod, "svc", "p1"}, {:members, MapSet.new([@a])}}
        ])

      assert violations(events, :b) == []
    end
  end

  describe "c. a full mesh after the faults" do
    test "measures from the faults' end, and flags a mesh later than the bound" do
      broken = [
        {45_000, {:pod, "svc", "p0"}, {:members, MapSet.new([@b])}},
        {45_000, {:pod, "svc", "p2"}, {:members, MapSet.new([@b])}}
      ]

      healed = [
        {52_000, {:pod, "svc", "p0"}, {:members, MapSet.new([@b, @c])}},
        {52_000, {:pod, "svc", "p2"}, {:members, MapSet.new([@a, @b])}}
      ]

      assert %{mesh: %{"g" => 2_000}, violations: %{c: []}} =
               Invariants.check(journal(broken ++ healed), @setup)

      assert [%{text: text}] = violations(journal(broken), :c)
      assert text =~ "app@10.244.0.10 lacks app@10.244.0.12"
    end
  end

  describe "d. no growth in long-lived pods" do
    defp vm(at, pod, atoms, modules),
      do:
        {at, {:pod, "svc", pod},
         {:vm, %{processes: 60, fds: 30, atoms: atoms, memory: 20_000_000, modules: modules}}}

    test "allows atoms for the modules loaded since, and flags atoms that grow alone" do
      loaded = journal([vm(19_000, "p0", 13_000, 190), vm(59_000, "p0", 13_130, 193)])
      assert violations(loaded, :d) == []

      leaked = journal([vm(19_000, "p0", 13_000, 190), vm(59_000, "p0", 13_130, 190)])
      assert [%{text: text}] = violations(leaked, :d)
      assert text =~ "atoms grew from 13000"
    end
  end

  describe "e. no connect to a pod that said it is leaving" do
    test "flags a connect after the word while the pod is listed, not one after it left the zone" do
      word =
        ~s|[info] [libcluster:k8s] :"app@10.244.0.11" is leaving (its node is shutting down): | <>
          "not connecting it again while DNS still lists it"

      events = [
        {30_000, {:pod, "svc", "p0"}, {:log, word}},
        {31_000, {:pod, "svc", "p0"}, {:connect, @b}},
        {32_000, :truth, {:unlisted, "g", "svc", @b}},
        {33_000, {:pod, "svc", "p0"}, {:connect, @b}}
      ]

      assert [%{at: 31_000}] = violations(journal(events), :e)
    end
  end
end
