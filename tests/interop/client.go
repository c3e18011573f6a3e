// A Herald client in Go, on Go code generated from proto/ by Debian's protoc-gen-go and
// protoc-gen-go-grpc and built against Debian's grpc-go: grpc-go's HTTP/2 stack, not
// Herald's, on the client side. Run by tests/tests/e2e/interop.rs with the control plane's
// and the agent's addresses and a receiver URL; prints what it saw as JSON.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	heraldv1 "example.invalid/herald/proto/herald/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

const tenant = "shop-go"

// codeOf is the status code name a call ended with, as gRPC's status table spells it
// ("NOT_FOUND"; "OK" when it succeeded).
func codeOf(err error) string {
	if err == nil {
		return "OK"
	}
	// grpc-go spells it "NotFound".
	var name strings.Builder
	for i, r := range status.Code(err).String() {
		if i > 0 && unicode.IsUpper(r) {
			name.WriteRune('_')
		}
		name.WriteRune(unicode.ToUpper(r))
	}
	return name.String()
}

func main() {
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(controlPlane, agent, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cp, err := grpc.DialContext(ctx, controlPlane, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	defer cp.Close()
	ag, err := grpc.DialContext(ctx, agent, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer ag.Close()
	subscriptions := heraldv1.NewSubscriptionsClient(cp)
	events := heraldv1.NewEventsClient(ag)
	seen := map[string]interface{}{}

	created, err := subscriptions.CreateSubscription(ctx, &heraldv1.CreateSubscriptionRequest{
		Subscription: &heraldv1.Subscription{Tenant: tenant, Url: url, EventTypes: []string{"order.*"}},
	})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	seen["subscription_id"] = created.Id
	seen["secret"] = created.Secrets[0].Secret

	// The agent delivers to the subscription once its config has reached it.
	event := &heraldv1.Event{Tenant: tenant, Type: "order.created", Payload: []byte(`{"order_id":"ord_go_1"}`)}
	for {
		emitted, err := events.Emit(ctx, &heraldv1.EmitRequest{Event: event})
		if err != nil {
			return fmt.Errorf("emit: %w", err)
		}
		if emitted.Matched == 1 {
			seen["event_id"] = emitted.EventId
			break
		}
		event.Id = ""
		time.Sleep(50 * time.Millisecond)
	}

	_, err = subscriptions.GetSubscription(ctx, &heraldv1.GetSubscriptionRequest{Id: "sub_does_not_exist"})
	seen["get_unknown_subscription"] = codeOf(err)
	_, err = events.Emit(ctx, &heraldv1.EmitRequest{Event: &heraldv1.Event{Tenant: tenant}})
	seen["emit_without_type"] = codeOf(err)
	over := []byte(`"` + strings.Repeat("x", 5<<20) + `"`)
	_, err = events.Emit(ctx, &heraldv1.EmitRequest{Event: &heraldv1.Event{Tenant: tenant, Type: "order.created", Payload: over}})
	seen["emit_over_the_limit"] = codeOf(err)

	// A burst: 200 concurrent batches of 100 KB on one connection, five times the agent's
	// budget of request bytes held at once, past the 128 calls a connection carries. (The
	// type matches no subscription: nothing is sent.)
	padding := `{"padding":"` + strings.Repeat("x", 10*1024) + `"}`
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := &heraldv1.EmitBatchRequest{}
			for j := 0; j < 10; j++ {
				batch.Events = append(batch.Events, &heraldv1.Event{Tenant: tenant, Type: "invoice.created", Payload: []byte(padding)})
			}
			_, err := events.EmitBatch(ctx, batch)
			mu.Lock()
			codes[codeOf(err)]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	seen["burst"] = codes
	return json.NewEncoder(os.Stdout).Encode(seen)
}
