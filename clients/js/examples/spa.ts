// The README's single-page-app example, type-checked against the built declarations by
// `npm run build` (tsc -p examples): the published types must accept what the README shows.
import { Switchboard, type Delivery, type Gap, type SwitchboardError } from '@switchboard/client';

declare function renderOrder(order: unknown): void;

const sb = new Switchboard({
  key: 'app-key',
  host: 'switchboard.example.com',
  port: 443,
  forceTLS: true,
  authEndpoint: '/pusher/auth',
  onGap: ({ channel, reason }: Gap) => {
    console.warn(`missed events on ${channel}: ${reason}`);
  },
  onError: (error: SwitchboardError) =>
    console.warn('switchboard', error.kind, error.message, error.messageIds),
});

const ids: string[] = [
  sb.identify('user-42', { plan: 'pro' }),
  sb.page(),
  sb.track('Order Completed', { orderId: 'o-1', total: 42 }),
];

const stop: () => void = sb.subscribe(
  'private-orders',
  'order-updated',
  (order: unknown, { replayed }: Delivery) => {
    if (!replayed) renderOrder(order);
  },
);

stop();
sb.disconnect();
export { ids };
