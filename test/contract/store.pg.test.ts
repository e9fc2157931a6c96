import { createPgTestStore, describePg } from '../helpers/pg.ts';
import { storeContract } from './store.contract.ts';

describePg('postgres', () => {
  storeContract('postgres', (label) => Promise.resolve(createPgTestStore(`store.pg:${label}`)));
});
