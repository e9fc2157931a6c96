import { createPgliteStore } from '../../src/store/pglite.ts';
import { storeContract } from './store.contract.ts';

storeContract('pglite (in memory)', async () => {
  const store = await createPgliteStore({ dataDir: 'memory://' });
  return { store, dispose: () => store.close() };
});
